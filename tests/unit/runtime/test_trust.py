"""The bounds a broker peer cannot pass (security review rows 3, 4 and 8), where no server is
needed: the pure checks, versions, the envelope, chunk joining and the live-event overflow."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import orjson
import pytest

from memoria.errors import EventFormatError
from memoria.leadership import LeaseView, LeaseWatcher
from memoria.metrics import RuntimeMetrics
from memoria.settings import LeadershipSettings, SyncSettings
from memoria.store import MemoryStore
from memoria.sync.applier import InboundApplier
from memoria.sync.base import Subscription
from memoria.sync.events import Delivery, SyncEvent, decode
from memoria.sync.payload import version_of
from memoria.sync.pg_notes import _MAX_PENDING, _MAX_PENDING_CHARS, Chunks, notes_for
from memoria.sync.trust import (
    CLOCK_SKEW,
    MAX_EVENT_BYTES,
    LeaseFacts,
    Refusal,
    check_decrement,
    check_time,
    next_version,
    now_us,
)

TODAY = dt.date(2031, 5, 10)


def _decrement(date: dt.date, token: object, lease: int | None = 7, highest: int = 7) -> object:
    return check_decrement(
        {"date": date.isoformat(), "token": token},
        today=TODAY,
        lease=LeaseFacts(lease),
        highest_token=highest,
    )


@pytest.mark.parametrize(
    ("date", "token", "lease", "highest", "refusal"),
    [
        (TODAY, 7, 7, 7, None),  # the current holder's token, a due date
        (TODAY - dt.timedelta(days=3), 5, 7, 7, None),  # an older leader's (the store fences)
        (TODAY + dt.timedelta(days=1), 7, 7, 7, Refusal.NOT_DUE),  # the review's tomorrow
        (TODAY, 2**63 - 1, 7, 7, Refusal.FENCE),  # the review's token
        (TODAY, 8, 7, 7, Refusal.FENCE),  # above the Lease's transitions
        (TODAY, -1, 7, 7, Refusal.FENCE),
        (TODAY, True, 7, 7, Refusal.FENCE),
        (TODAY, "7", 7, 7, Refusal.FENCE),
        (TODAY, 8, None, 7, None),  # no Lease: one above the highest seen (a failover)
        (TODAY, 9, None, 7, Refusal.FENCE),
    ],
)
def test_a_peers_decrement_is_checked_against_our_clock_and_lease(
    date: dt.date, token: object, lease: int | None, highest: int, refusal: Refusal | None
) -> None:
    assert _decrement(date, token, lease, highest) == refusal


def test_times_and_versions_beyond_the_skew_are_refused() -> None:
    now = dt.datetime.now(dt.UTC)
    soon = now + CLOCK_SKEW - dt.timedelta(seconds=1)
    assert check_time(soon, next_version(0), now) is None
    assert check_time(now + CLOCK_SKEW + dt.timedelta(seconds=1), 1, now) is Refusal.FUTURE
    assert check_time(now, 2**62, now) is Refusal.VERSION_AHEAD
    ahead = int((now + CLOCK_SKEW).timestamp() * 1e6) + 10_000
    assert check_time(now, ahead, now) is Refusal.VERSION_AHEAD


def test_versions_are_a_hybrid_clock() -> None:
    first = next_version(0)
    assert first >= now_us() - 1_000_000
    assert next_version(first) > first
    pushed = now_us() + 60_000_000  # a version someone pushed a minute ahead
    assert next_version(pushed) == pushed + 1
    # the owner's clock passes a pushed version: its next write wins over it
    assert next_version(5, now=pushed + 1) > pushed


def _reference(payload: dict[str, object], **envelope: object) -> bytes:
    body = {"action": "memory.updated", "namespace": "default", "payload": payload, **envelope}
    return orjson.dumps(body)


def test_an_id_less_events_version_comes_from_its_content_not_its_arrival() -> None:
    no_time = _reference({"memory_id": "m", "privacy": 0, "snapshot": {"text": "t"}})
    one, two = (decode(no_time, None).event for _ in range(2))
    assert one is not None and two is not None
    assert version_of(one) == version_of(two) == 1  # nothing dated: older than any timed write
    dated = _reference(
        {"memory_id": "m", "privacy": 0, "snapshot": {"text": "t", "timestamp": "2030-01-01"}}
    )
    first, again = (decode(dated, None).event for _ in range(2))
    assert first is not None and again is not None
    assert (
        version_of(first)
        == version_of(again)
        == int(dt.datetime(2030, 1, 1, tzinfo=dt.UTC).timestamp() * 1e6)
    )
    sent = _reference({"memory_id": "m", "privacy": 0}, created_at="2031-02-03T04:05:06+00:00")
    event = decode(sent, None).event
    assert event is not None
    assert version_of(event) == int(
        dt.datetime(2031, 2, 3, 4, 5, 6, tzinfo=dt.UTC).timestamp() * 1e6
    )


def test_a_payload_that_is_not_json_is_refused_when_the_event_is_made() -> None:
    with pytest.raises(EventFormatError, match="payload is not JSON"):
        SyncEvent("memory.created", payload={"tags": {"a", "b"}})
    with pytest.raises(EventFormatError, match="payload is not JSON"):
        SyncEvent("memory.created", payload={"n": 1 << 70})
    SyncEvent("memory.created", payload={"fine": [1, "two", None]})


def test_an_oversized_payload_is_not_even_parsed() -> None:
    raw = '{"action": "memory.created", "namespace": "d", "x": "' + "a" * MAX_EVENT_BYTES + '"}'
    delivery = decode(raw, "7-0")
    assert (delivery.event, delivery.reason, delivery.position) == (None, "oversized", "7-0")
    wide = '{"x": "' + "\u00e9" * (MAX_EVENT_BYTES // 2 + 10) + '"}'  # few chars, many bytes
    assert decode(wide, None).reason == "oversized"


def test_chunks_that_never_complete_stay_bounded() -> None:
    joiner = Chunks()
    for i in range(50_000):  # the review's flood: 50k chunks of events that never complete
        note = {"chunk": {"event_id": f"e{i}", "index": 0, "count": 300}, "data": "x" * 3000}
        assert joiner.add(orjson.dumps(note).decode()) is None
    assert len(joiner._pending) <= _MAX_PENDING
    assert joiner._chars <= _MAX_PENDING_CHARS
    assert joiner.dropped >= 50_000 - _MAX_PENDING


def test_a_contradictory_chunk_drops_its_event_only() -> None:
    event = SyncEvent("memory.created", namespace="d", payload={"text": "y" * 10_000})
    notes = notes_for([(event.event_id, event.to_json())], 7900)[1:]
    joiner = Chunks()
    bad = {"chunk": {"event_id": "other", "index": 0, "count": 3}, "data": "a"}
    joiner.add(orjson.dumps(bad).decode())
    bad["chunk"] = {"event_id": "other", "index": 5, "count": 2}  # index past its count
    assert joiner.add(orjson.dumps(bad).decode()) is None
    bad["chunk"] = {"event_id": "other", "index": 1, "count": 9}  # another count: dropped
    assert joiner.add(orjson.dumps(bad).decode()) is None
    assert joiner.add('{"chunk": {"index": "x"}}') is None
    assert joiner.add('{"chunk": {"event_id": 1, "index": 1e400, "count": 2}, "data": ""}') is None
    joined = [j for j in map(joiner.add, notes) if j is not None]
    assert [orjson.loads(j) for j in joined] == [orjson.loads(event.to_json())]


class _Idle(Subscription):
    def session(self) -> None:  # never started in this test
        raise AssertionError


def test_live_events_over_the_cap_are_counted_as_lost() -> None:
    def failing(_batch: list[Delivery]) -> None:
        raise ConnectionError("the store is down")

    sub = _Idle("t", failing, None)
    losses: list[tuple[str, int]] = []
    sub.report_loss = lambda reason, n: losses.append((reason, n))
    delivery = Delivery(None, None)
    for _ in range(3):
        with pytest.raises(ConnectionError):
            sub.hand_over_live([delivery] * 4_000)
    assert losses == [("live_overflow", 2_000)]


def test_the_lease_watcher_knows_the_lease_only_once_it_read_it() -> None:
    settings = LeadershipSettings(lease_name="memoria-scheduler-default", identity="ns/region-a")
    watcher = LeaseWatcher(settings, lambda _leadership: None)
    assert watcher.facts() == LeaseFacts(None)
    watcher._update(LeaseView("ns/region-b", 4, 0.0))
    assert watcher.facts() == LeaseFacts(4)


def test_a_flood_of_refused_events_is_counted_each_but_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = MemoryStore(f"sqlite:///{tmp_path / 'flood.db'}")
    metrics = RuntimeMetrics()
    applier = InboundApplier(store, metrics, region="b", sync=lambda: SyncSettings(enabled=True))
    caplog.set_level(logging.WARNING, logger="memoria.sync")
    future = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    forged = [
        _reference(
            {"memory_id": f"m{i}", "privacy": 0, "snapshot": {"text": "t"}},
            created_at=future.isoformat(),
            origin="x",
        )
        for i in range(500)
    ]
    applier.apply([decode(raw, None) for raw in forged], "test")
    assert (
        metrics.registry.get_sample_value("memoria_sync_events_dropped_total", {"reason": "future"})
        == 500
    )
    assert len([r for r in caplog.records if "refusing" in r.getMessage()]) == 1
    assert store.count_memories() == 0
    store.close()
