"""A hostile peer on a real broker (security review rows 3, 4 and 8): it holds the broker's
credentials and publishes what it likes, on Redis and on PostgreSQL. What it must not do: run or
block the decrement, delete or move memories for good, or blow up a region's memory."""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterator
from pathlib import Path

import orjson
import psycopg
import pytest

from memoria.sync import RedisSyncBackend, SyncBackend, create_backend
from memoria.sync.applier import DEFER_AHEAD
from memoria.sync.trust import LeaseFacts, now_us
from testbed import PostgresServer, RedisServer, wait_until
from testbed.hostile import forge, forged_decrement, forged_memory_event
from testbed.inprocess import Broker, Region, two_regions

pytestmark = pytest.mark.integration

TODAY = dt.datetime.now(dt.UTC).date()
DAY_A, DAY_B, DAY_C = ((TODAY - dt.timedelta(days=n)).isoformat() for n in (3, 2, 1))


@pytest.fixture(params=["redis", "postgres"])
def broker(
    request: pytest.FixtureRequest, redis_server: RedisServer, postgres_server: PostgresServer
) -> Broker:
    if request.param == "redis":
        return Broker("redis", redis_server.url, redis_server.url)
    database = postgres_server.create_database(f"hostile_{random.randrange(1 << 30)}")
    return Broker("postgres", database, database, table="memoria_sync_events")


@pytest.fixture
def hostile(broker: Broker) -> Iterator[SyncBackend]:
    """The attacker's own connection to the broker: it publishes any JSON it likes."""
    backend = create_backend(broker.sync(reader=False))
    yield backend
    backend.close()


def settled(writer: Region, reader: Region) -> None:
    """Wait until ``reader`` applied everything published before now: a fresh write of the
    writer's arrives after all of it (one journal, in order)."""
    mark = writer.write("mark", y=0)
    wait_until(lambda: mark in reader.ids(), what="the events before the mark")


def refused(region: Region, reason: str) -> float:
    return region.total("memoria_sync_events_dropped_total", reason=reason)


def test_a_forged_decrement_neither_runs_early_nor_raises_the_fence(
    broker: Broker, hostile: SyncBackend, tmp_path: Path
) -> None:
    with two_regions(broker, tmp_path) as (leader, standby):
        for i in range(5):
            leader.write(f"m{i}", y=0)
        tomorrow = (TODAY + dt.timedelta(days=2)).isoformat()
        # the review's event (tomorrow, token 2^63-1), and a due date with that token
        forge(hostile, forged_decrement(tomorrow, 2**63 - 1), forged_decrement(DAY_A, 2**63 - 1))
        forge(hostile, forged_decrement(tomorrow, 1))
        settled(leader, standby)
        assert refused(standby, "decrement_not_due") == 2
        assert refused(standby, "decrement_token") == 1
        assert standby.store.metadata()["last_decrement_date"] in ("", None)
        # the real leader's decrement is not refused as stale: it runs once at the standby
        assert leader.writes.run_decrement(DAY_A, token=1).ran
        wait_until(lambda: standby.store.metadata()["last_decrement_date"] == DAY_A)
        # a region that watches the Lease refuses any token above its transitions
        standby.sync.applier.lease_facts = lambda: LeaseFacts(1)
        forge(hostile, forged_decrement(DAY_B, 2))
        settled(leader, standby)
        assert refused(standby, "decrement_token") == 2
        assert leader.writes.run_decrement(DAY_B, token=1).ran
        wait_until(lambda: standby.store.metadata()["last_decrement_date"] == DAY_B)
        meta = standby.store.metadata()
        assert (meta["fencing_token"], meta["last_decrement_by"]) == ("1", "region-a")
        assert {m.x_coord for m in standby.store.list_memories() if m.text != "mark"} == {-2.0}
        # in a group across clusters a token a little above is kept (a new leader in another
        # cluster: its token reaches this cluster's Lease a moment after its decrement reaches
        # the broker), not applied, not lost; far above is refused as in one cluster
        standby.sync.applier.defer_ahead = DEFER_AHEAD
        forge(hostile, forged_decrement(DAY_C, 1 + DEFER_AHEAD + 1))
        settled(leader, standby)
        assert refused(standby, "decrement_token") == 3
        assert leader.writes.run_decrement(DAY_C, token=2).ran
        settled(leader, standby)
        assert standby.store.metadata()["last_decrement_date"] == DAY_B
        assert refused(standby, "decrement_token") == 3
        standby.sync.applier.retry_deferred()  # the Lease has not moved: still kept
        assert standby.store.metadata()["last_decrement_date"] == DAY_B
        # kept in the store, not in memory: a restart before the Lease catches up loses nothing
        assert [e.payload["date"] for e in standby.store.deferred()] == [DAY_C]
        standby.sync.applier.lease_facts = lambda: LeaseFacts(2)
        standby.sync.applier.retry_deferred()  # what the Lease watch calls when it moves
        assert standby.store.metadata()["last_decrement_date"] == DAY_C
        assert {m.x_coord for m in standby.store.list_memories() if m.text != "mark"} == {-3.0}
        assert standby.store.deferred() == []


def test_forged_deletes_and_updates_do_not_win_for_good(
    broker: Broker, hostile: SyncBackend, tmp_path: Path
) -> None:
    with two_regions(broker, tmp_path) as (owner, receiver):
        ids = [owner.write(f"m{i}", y=0) for i in range(50)]
        wait_until(lambda: set(ids) <= receiver.ids(), what="the memories at the receiver")
        # the review's attack: deletes claiming the owner's origin with version 2^62
        forge(
            hostile,
            *(forged_memory_event("memory.deleted", i, "region-a", version=2**62) for i in ids),
        )
        # an update moving a memory to another namespace, with a huge version
        forge(hostile, forged_memory_event("memory.updated", ids[0], "region-a", version=2**62))
        moved = forged_memory_event(
            "memory.updated", ids[1], "region-a", namespace="elsewhere", version=2**62
        )
        forge(hostile, moved)
        # a reference-style update (no version) dated far ahead
        forge(
            hostile,
            forged_memory_event("memory.updated", ids[2], "x", created_at="2100-01-01T00:00Z"),
        )
        # a delete from another region that does not win as an update would
        forge(hostile, forged_memory_event("memory.deleted", ids[3], "region-x", version=1))
        settled(owner, receiver)
        assert set(ids) <= receiver.ids()
        assert refused(receiver, "version_ahead") == 52
        assert refused(receiver, "future") == 1
        assert refused(receiver, "foreign_delete") == 1
        assert {m.namespace for m in receiver.store.list_memories(limit=100)} == {"default"}
        assert "forged" not in {m.text for m in receiver.store.list_memories(limit=100)}
        # within the bounds a forger's delete is applied, as an update would be ...
        forge(hostile, forged_memory_event("memory.deleted", ids[4], "region-a", version=now_us()))
        settled(owner, receiver)
        assert ids[4] not in receiver.ids()
        # ... and the owner's next write repairs it
        owner.writes.update_memory(ids[4], {"text": "repaired"})
        wait_until(lambda: ids[4] in receiver.ids(), what="the owner's repair")
        assert receiver.store.get_memory(ids[4]).text == "repaired"


def test_oversized_events_and_texts_are_refused_and_honest_ones_still_arrive(
    broker: Broker, hostile: SyncBackend, tmp_path: Path
) -> None:
    with two_regions(broker, tmp_path) as (writer, reader):
        first = writer.write("before", y=0)
        wait_until(lambda: first in reader.ids(), what="the first memory")
        reader.stop()  # away: what follows comes back by catch-up
        huge = "z" * (2 << 20)  # 2 MiB: over the event cap
        for n in range(20):
            forge(hostile, forged_memory_event("memory.created", f"huge{n}", "x", pad=huge))
        long_text = forged_memory_event("memory.created", "long", "x")
        long_text["payload"]["snapshot"]["text"] = "w" * 200_000  # over the API's text cap
        forge(hostile, long_text)
        honest = [writer.write(f"honest {i}", y=0) for i in range(10)]
        reader.restart()
        wait_until(lambda: set(honest) <= reader.ids(), timeout=60, what="the honest memories")
        assert refused(reader, "oversized") == 21
        assert not {"long", *(f"huge{n}" for n in range(20))} & reader.ids()


def test_a_trimmed_stream_is_reported_not_skipped_silently(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    broker = Broker("redis", redis_server.url, redis_server.url)
    with two_regions(broker, tmp_path) as (writer, reader):
        first = writer.write("before", y=0)
        wait_until(lambda: first in reader.ids(), what="the first memory")
        reader.stop()
        flood = RedisSyncBackend(redis_server.url, broker.channel, journal_max_events=10)
        try:  # a peer (or a short MAXLEN) trims the Stream past the reader's position
            for _ in range(5):
                forge(flood, *(forged_decrement("2000-01-01", 0) for _ in range(200)))
        finally:
            flood.close()
        after = writer.write("after", y=0)
        reader.restart()
        wait_until(lambda: after in reader.ids(), what="the memory written after the trim")
        assert reader.count("memoria_sync_events_lost_total", reason="trimmed") == 1


def test_a_flood_of_chunks_that_never_complete_is_bounded(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    database = postgres_server.create_database(f"chunks_{random.randrange(1 << 30)}")
    broker = Broker("postgres", database, database)  # no table: big events travel in chunks
    with two_regions(broker, tmp_path) as (writer, reader), psycopg.connect(database) as conn:
        conn.autocommit = True
        for n in range(3000):
            note = {
                "action": "memoria.chunk",
                "entity_type": "chunk",
                "namespace": "_memoria_chunk",
                "chunk": {"event_id": f"never{n}", "index": n % 5, "count": 300},
                "data": "c" * 3000,
            }
            conn.execute("SELECT pg_notify(%s, %s)", (broker.channel, orjson.dumps(note).decode()))
        big = writer.write("b" * 20_000, y=0)  # honest, and chunked too
        wait_until(lambda: big in reader.ids(), timeout=30, what="the honest chunked memory")
        assert reader.count("memoria_sync_events_lost_total", reason="chunks") > 2000


def test_in_signed_trust_only_the_groups_events_are_taken(
    broker: Broker, hostile: SyncBackend, tmp_path: Path
) -> None:
    signed = {"signing_key": "group-secret", "trust": "signed"}
    a = Region("region-a", f"sqlite:///{tmp_path / 'a.db'}", broker.sync(reader=False, **signed))
    b = Region("region-b", f"sqlite:///{tmp_path / 'b.db'}", broker.sync(reader=True, **signed))
    a.start()
    b.start()
    try:
        wait_until(lambda: b.sync.health().listener_connected is True, what="the listener")
        first = a.write("signed", y=0)
        wait_until(lambda: first in b.ids(), what="a signed memory")
        forge(hostile, forged_memory_event("memory.updated", first, "region-a", version=now_us()))
        bad = forged_memory_event("memory.deleted", first, "region-a", version=now_us())
        bad["sig"] = "0" * 64
        forge(hostile, bad, forged_decrement(DAY_A, 1))
        settled(a, b)
        assert refused(b, "unsigned") == 2
        assert refused(b, "bad_signature") == 1
        assert b.store.get_memory(first).text == "signed"
        assert b.store.metadata()["last_decrement_date"] in ("", None)
    finally:
        a.stop(flush_timeout=1)
        b.stop(flush_timeout=1)
