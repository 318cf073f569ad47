"""Fault tests on real brokers: restarts, outages, absent subscribers, hostile payloads."""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from memoria.sync.events import Action, EntityType, SyncEvent
from memoria.sync.postgres import PostgresSyncBackend
from testbed import PostgresServer, RedisServer, wait_until
from testbed.inprocess import Broker, Region, two_regions

pytestmark = pytest.mark.integration


@pytest.fixture(params=["redis", "postgres"])
def private_broker(
    request: pytest.FixtureRequest,
) -> Iterator[tuple[Broker, RedisServer | PostgresServer]]:
    """A broker of our own, since these tests stop and restart it."""
    if request.param == "redis":
        server: RedisServer | PostgresServer = RedisServer()
        server.start()
        yield Broker("redis", server.url, server.url), server
    else:
        server = PostgresServer()
        server.start()
        url = server.create_database("sync")
        yield Broker("postgres", url, url, table="infra.memoria_sync_events"), server
    server.destroy()


def inbox_size(region: Region) -> int:
    with region.store.db.transaction(write=False) as tx:
        return int(tx.execute("SELECT COUNT(*) FROM sync_inbox").fetchone()[0])


@pytest.mark.slow
def test_broker_restart_and_absent_subscriber_lose_nothing(
    private_broker: tuple[Broker, RedisServer | PostgresServer], tmp_path: Path
) -> None:
    broker, server = private_broker
    total = 3000
    with two_regions(broker, tmp_path) as (a, b):
        written: list[str] = []

        def writer() -> None:
            for i in range(total):
                written.append(a.write(f"event {i}", y=i % 31 - 15))
                if i % 50 == 0:
                    time.sleep(0.01)  # a steady stream, not one burst

        thread = threading.Thread(target=writer)
        thread.start()
        wait_until(lambda: len(written) > total // 4, what="a quarter written")
        server.stop()  # the broker goes away mid-stream...
        time.sleep(1.0)
        server.start()  # ...and comes back on the same port with its data
        wait_until(lambda: len(written) > total // 2, what="half written")
        b.stop()  # the subscriber region goes away for a while
        time.sleep(1.5)
        b.restart()
        thread.join(120)
        assert len(written) == total
        wait_until(
            lambda: set(written) <= b.ids(),
            timeout=60,
            what="all events at region-b",
            detail=lambda: f"{len(set(written) - b.ids())} missing",
        )
        assert a.store.outbox_depth("region-a") == 0
        # the broker really was gone mid-stream: publishing failed and writes queued meanwhile
        assert a.count("memoria_sync_publish_failures_total") > 0
        # exactly once: every event applied once over b's incarnations, none twice
        assert b.total("memoria_sync_events_applied_total") == total
        assert inbox_size(b) == total
        # each as written, never updated since
        assert {m.id: m.version for m in b.store.list_memories(limit=total)} == {
            m.id: m.version for m in a.store.list_memories(limit=total)
        }
        assert b.store.count_memories() == total


def test_broker_down_at_write_time_then_up(
    private_broker: tuple[Broker, RedisServer | PostgresServer], tmp_path: Path
) -> None:
    broker, server = private_broker
    with two_regions(broker, tmp_path) as (a, b):
        wait_until(lambda: b.sync.health().listener_connected is True, what="listener")
        server.stop()
        started = time.monotonic()
        ids = [a.write(f"while down {i}", y=0) for i in range(10)]
        assert time.monotonic() - started < 2.0, "writes must not wait for the broker"
        assert a.store.outbox_depth("region-a") == 10
        wait_until(lambda: a.count("memoria_sync_publish_failures_total") > 0, what="a failure")
        assert a.sync.health().state in {"degraded", "down"}
        server.start()
        wait_until(lambda: set(ids) <= b.ids(), timeout=30, what="the queued writes at region-b")
        assert a.store.outbox_depth("region-a") == 0
        assert b.sync.reconnects >= 1


def test_reconnect_is_logged_once_per_outage(
    private_broker: tuple[Broker, RedisServer | PostgresServer],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker, server = private_broker
    caplog.set_level(logging.INFO, logger="memoria.sync")
    with two_regions(broker, tmp_path) as (a, b):
        both = (a, b)
        wait_until(lambda: all(r.sync.health().listener_connected for r in both), what="listeners")
        server.stop()
        wait_until(lambda: b.sync.reconnects >= 3, timeout=30, what="several retries")
        server.start()
        wait_until(
            lambda: all(r.sync.health().listener_connected for r in both),
            timeout=30,
            what="both listeners reconnected",
        )
    lost = [
        r
        for r in caplog.records
        if "listener" in r.getMessage() and "connection lost" in r.getMessage()
    ]
    back = [r for r in caplog.records if "reconnected" in r.getMessage()]
    # two listeners (region-a and region-b each subscribe): one line each for the whole outage,
    # however many retries it took
    assert len(lost) == 2, [r.getMessage() for r in lost]
    assert len(back) == 2


def _inject_garbage(broker: Broker, payloads: list[str]) -> None:
    if broker.backend == "redis":
        client = redis.Redis.from_url(broker.publish_url)
        for raw in payloads:
            client.xadd(f"{broker.channel}:journal", {"event": raw})
        client.xadd(f"{broker.channel}:journal", {"no-event-field": "x"})
        return
    with psycopg.connect(broker.publish_url, autocommit=True) as conn:
        for raw in payloads:
            body = raw if raw.startswith(("{", "[", '"')) else json.dumps(raw)
            try:
                json.loads(body)
            except ValueError:
                body = json.dumps(raw)
            with conn.transaction():
                row = conn.execute(
                    "INSERT INTO infra.memoria_sync_events (channel, event_id, payload) "
                    "VALUES (%s, 'x', %s::jsonb) RETURNING id",
                    (broker.channel, body),
                ).fetchone()
                assert row is not None
                conn.execute(
                    "SELECT pg_notify(%s, %s)",
                    (broker.channel, json.dumps({"journal_id": row[0], "action": "garbage"})),
                )
        conn.execute("SELECT pg_notify(%s, 'not json at all')", (broker.channel,))


def test_malformed_payloads_are_skipped_and_the_listener_lives_on(
    private_broker: tuple[Broker, RedisServer | PostgresServer],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker, _server = private_broker
    valid = {
        "action": "memory.created",
        "entity_type": "memory",
        "namespace": "n",
        "entity_id": "e1",
        "origin": "elsewhere",
        "payload": {"text": "t", "y_coord": 0},
    }
    garbage = [
        "not json",
        "[1, 2, 3]",
        json.dumps({**valid, "action": "explode"}),  # unknown action
        json.dumps({**valid, "entity_type": "galaxy"}),  # unknown entity
        json.dumps({**valid, "payload": {"text": 5, "y_coord": "high"}}),  # wrong types
        json.dumps({**valid, "payload": "a string"}),  # payload not object: {}, no text
        json.dumps({**valid, "namespace": ""}),  # no namespace
        json.dumps({**valid, "payload": {"text": "t"}}),  # no privacy: never stored
    ]
    caplog.set_level(logging.WARNING)
    with two_regions(broker, tmp_path) as (a, b):
        wait_until(lambda: b.sync.health().listener_connected is True, what="listener")
        _inject_garbage(broker, garbage)
        after = a.write("valid after garbage", y=0)
        wait_until(lambda: after in b.ids(), what="the valid event after the garbage")
        assert b.count("memoria_sync_events_dropped_total", reason="malformed") >= 6
        # an unknown action or entity type is a valid event this region does not handle
        assert b.count("memoria_sync_events_dropped_total", reason="unsupported") >= 2
        assert b.sync.subscription is not None
        assert b.sync.subscription.is_alive()
        assert b.sync.reconnects == 0  # skipped, not crashed and restarted
        assert "e1" not in b.ids()
    assert any(
        "malformed" in r.getMessage() or "skipping" in r.getMessage() for r in caplog.records
    )


@pytest.mark.parametrize("table", ["infra.memoria_sync_events", None])
def test_postgres_payload_over_notify_limit_arrives(
    postgres_server: PostgresServer, tmp_path: Path, table: str | None
) -> None:
    url = postgres_server.create_database("sync")
    broker = Broker("postgres", url, url, table=table)
    with two_regions(broker, tmp_path) as (a, b):
        wait_until(lambda: b.sync.health().listener_connected is True, what="listener")
        big = "ü€" * 6000  # 30 kB of UTF-8 with multi-byte characters
        mid = a.write(big, y=0)
        wait_until(lambda: mid in b.ids(), what="the big memory")
        assert b.store.get_memory(mid).text == big


def _journal_publisher(url: str) -> PostgresSyncBackend:
    """A publisher to a journal whose rows expire after an hour."""
    return PostgresSyncBackend(
        url, channel="prune", table="infra.prune_journal", retention=dt.timedelta(hours=1)
    )


def _event(i: int) -> SyncEvent:
    return SyncEvent(Action.CREATE, EntityType.MEMORY, "n", str(i), {"y_coord": 0}, "r")


def _age_journal(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE infra.prune_journal SET created_at = now() - interval '2 hours'")


def _journal_ids(url: str) -> list[tuple[str]]:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT payload->>'entity_id' FROM infra.prune_journal").fetchall()


def test_postgres_journal_is_pruned_after_retention(postgres_server: PostgresServer) -> None:
    url = postgres_server.create_database("prune")
    backend = _journal_publisher(url)
    backend.publish_many([_event(i) for i in range(5)])  # the first publish prunes (nothing)
    _age_journal(url)
    backend._last_prune = time.monotonic() - 3601  # an hour has "passed"
    backend.publish_many([_event(9)])
    left = _journal_ids(url)
    backend.close()
    assert left == [("9",)]


def test_postgres_journal_is_pruned_at_the_first_publish(postgres_server: PostgresServer) -> None:
    """However recently the machine booted: a publisher that has never pruned prunes at once."""
    url = postgres_server.create_database("prune_first")
    old = _journal_publisher(url)
    old.publish_many([_event(i) for i in range(3)])
    old.close()
    _age_journal(url)
    fresh = _journal_publisher(url)
    fresh.publish_many([_event(9)])
    fresh.close()
    assert _journal_ids(url) == [("9",)]
