"""Sync parts that need no server: the publish() sender, what a PostgreSQL error means for the
events, the default channel per backend, and what the applier does with each kind of event."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import psycopg
import pytest

from memoria.errors import BrokerRefused, BrokerUnavailable, EventRejected
from memoria.metrics import RuntimeMetrics
from memoria.settings import SyncSettings, apply_updates, load_settings
from memoria.store import MemoryStore
from memoria.sync.applier import InboundApplier
from memoria.sync.events import SyncEvent, decode
from memoria.sync.pg_journal import classify
from memoria.sync.sender import Sender
from testbed.reference_peer import capture


class FlakyBroker:
    """A publish_encoded that can be down, or refuse one event's content."""

    def __init__(self) -> None:
        self.received: list[str] = []
        self.down = False
        self.poison = "poison"
        self.batches = 0

    def __call__(self, events: Sequence[tuple[str, str]]) -> None:
        if self.down:
            raise BrokerUnavailable("broker down")
        if any(event_id == self.poison for event_id, _ in events):
            raise EventRejected("bad content")
        self.batches += 1
        self.received += [event_id for event_id, _ in events]


def test_publish_queues_in_order_and_flush_waits() -> None:
    broker = FlakyBroker()
    sender = Sender(broker, "test")
    for i in range(5000):
        sender.submit((str(i), "{}"))
    sender.flush(10)
    assert broker.received == [str(i) for i in range(5000)]
    assert broker.batches < 5000  # batched behind the caller's back
    sender.close()


def test_while_the_broker_is_down_nothing_is_lost_and_publish_says_so() -> None:
    broker = FlakyBroker()
    broker.down = True
    sender = Sender(broker, "test")
    sender.submit(("a", "{}"))
    with pytest.raises(BrokerUnavailable, match="broker down"):
        sender.flush(1.0)  # the sender has tried and found the broker down
    with pytest.raises(BrokerUnavailable, match="1 earlier events queued"):
        sender.submit(("refused while down", "{}"))  # not queued: the caller keeps it
    assert sender.queued == 1
    with pytest.raises(BrokerUnavailable, match="stay queued"):
        sender.flush(0.2)
    broker.down = False
    sender.flush(10)
    assert broker.received[0] == "a"
    sender.submit(("b", "{}"))  # accepted again
    sender.flush(10)
    assert broker.received[-1] == "b"
    sender.close()


def test_an_event_refused_for_its_content_is_reported_by_flush() -> None:
    broker = FlakyBroker()
    sender = Sender(broker, "test")
    for event_id in ("x", "poison", "y"):
        sender.submit((event_id, "{}"))
    with pytest.raises(EventRejected, match="poison"):
        sender.flush(10)
    assert broker.received == ["x", "y"]
    sender.flush(10)  # reported once
    sender.close()


@pytest.mark.parametrize(
    ("error", "expected", "reason"),
    [
        (psycopg.OperationalError("connection refused"), BrokerUnavailable, None),
        (psycopg.errors.AdminShutdown("terminating"), BrokerUnavailable, None),
        (psycopg.errors.UndefinedTable("no such table"), BrokerRefused, "undefined_table"),
        (psycopg.errors.InsufficientPrivilege("denied"), BrokerRefused, "insufficient_privilege"),
        (
            psycopg.errors.ReadOnlySqlTransaction("read-only"),
            BrokerRefused,
            "read_only_sql_transaction",
        ),
        (psycopg.errors.UntranslatableCharacter("\\u0000"), EventRejected, None),
    ],
)
def test_what_a_postgres_error_means_for_the_events(
    error: psycopg.Error, expected: type[Exception], reason: str | None
) -> None:
    meaning = classify(error, "postgres at h")
    assert type(meaning) is expected
    assert "postgres at h" in str(meaning)
    if reason is not None:
        assert isinstance(meaning, BrokerRefused) and meaning.reason == reason


def test_the_channel_defaults_to_the_guides_name_for_each_backend(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("MEMORIA_SYNC__CHANNEL", "MEMORIA_SYNC__BACKEND"):
        monkeypatch.delenv(name, raising=False)
    assert SyncSettings(backend="redis").channel == "memoria-sync"  # type: ignore[arg-type]
    assert SyncSettings(backend="postgres").channel == "memoria_sync"  # type: ignore[arg-type]
    url = {"sync.connection_url": "postgresql://h/db"}
    switched = apply_updates(load_settings(), {"sync.backend": "postgres", **url})
    assert switched.sync.channel == "memoria_sync"  # an unset channel follows the backend
    explicit = apply_updates(load_settings(), {"sync.channel": "mine"})
    assert apply_updates(explicit, {"sync.backend": "postgres", **url}).sync.channel == "mine"
    monkeypatch.setenv("MEMORIA_SYNC__BACKEND", "postgres")
    monkeypatch.setenv("MEMORIA_SYNC__CHANNEL", "memoria-sync")
    assert load_settings().sync.channel == "memoria-sync"  # an explicit setting still works


def test_the_applier_counts_and_skips_what_it_does_not_handle(tmp_path: Path) -> None:
    store = MemoryStore(f"sqlite:///{tmp_path / 's.db'}")
    metrics = RuntimeMetrics()
    sync = SyncSettings(enabled=True, namespaces=["default"], privacy_floor=0)
    applier = InboundApplier(store, metrics, region="region-b", sync=lambda: sync)
    created = capture("memory.created")
    other_namespace = created.replace('"namespace": "default"', '"namespace": "elsewhere"')
    thread = SyncEvent("thread.updated", "thread", "default", "t1", {"x": 1}, "ref").to_json()
    own = created.replace('"origin": "region-a-7f3c"', '"origin": "region-b"')
    batch = [
        decode(created, None),
        decode(other_namespace, None),
        decode(thread, None),
        decode('{"action": "memory.exploded", "namespace": "default"}', None),
        decode(own, None),
        decode(capture("memory.created.private-y-12"), None),
    ]
    applier.apply(batch, "test")

    def dropped(reason: str) -> float:
        value = metrics.registry.get_sample_value(
            "memoria_sync_events_dropped_total", {"reason": reason}
        )
        return value or 0.0

    assert [m.text for m in store.list_memories()] == ["met Ana at the harbour"]
    assert dropped("namespace") == 1
    assert dropped("unsupported") == 2
    assert dropped("own_origin") == 1
    assert dropped("privacy_in") == 1
    store.close()


def test_live_events_wait_for_a_handler_that_failed() -> None:
    """A reference publisher's event has no journal to be read again from: a subscription keeps
    it until its handler takes it (say once the store is back)."""
    from memoria.sync.base import Subscription
    from memoria.sync.events import Delivery

    taken: list[list[Delivery]] = []
    store_down = [True]

    def handler(batch: list[Delivery]) -> None:
        if store_down[0]:
            raise RuntimeError("store down")
        taken.append(list(batch))

    class Live(Subscription):
        def session(self) -> None:  # never started here
            raise NotImplementedError

    sub = Live("live", handler, None)
    first = decode(capture("memory.created"), None)
    with pytest.raises(RuntimeError):
        sub.hand_over_live([first])
    store_down[0] = False
    second = decode(capture("memory.updated"), None)
    sub.hand_over_live([second])
    assert taken == [[first, second]]
    sub.hand_over_live([])
    assert len(taken) == 1


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://redis-b:6379/0", "redis://10.0.0.5:6380/0"),
        (
            "rediss://u:p%40ss@redis-b:6379/2?ssl_cert_reqs=none",
            "rediss://u:p%40ss@10.0.0.5:6380/2?ssl_cert_reqs=none",
        ),
        ("redis://:secret@redis-b", "redis://:secret@10.0.0.5:6380"),
        ("unix:///run/redis.sock?db=1", "redis://10.0.0.5:6380?db=1"),
    ],
)
def test_the_primary_of_a_replica_is_reached_with_the_replicas_credentials(
    url: str, expected: str
) -> None:
    from memoria.sync.redis import url_at

    assert url_at(url, "10.0.0.5", 6380) == expected


def test_an_ipv6_primary_gets_brackets() -> None:
    from memoria.sync.redis import url_at

    assert url_at("redis://r:6379/0", "fd00::5", 6379) == "redis://[fd00::5]:6379/0"
