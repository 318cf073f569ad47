"""A mixed fleet on a real PostgreSQL: reference regions (modelled from the documented rules,
see ``reference_peer``) and ours on one channel and one journal table, both ways."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from memoria.settings import SyncSettings
from memoria.sync.postgres import NOTIFY_LIMIT
from testbed import PostgresServer, wait_until
from testbed.inprocess import Broker, Region, sqlite_url, two_regions
from testbed.reference_peer import (
    PostgresReferencePeer,
    ReferenceReceiver,
    capture,
)

pytestmark = pytest.mark.integration

TABLE = "infra.memoria_sync_events"  # the guide's example
REF_ID = "3f6c1a52-8d0e-4f7b-9a61-2b5d7c0e9a14"
CAPTURES = ["memory.created", "memory.created.private-y-12", "memory.updated", "memory.deleted"]


@pytest.fixture
def database(postgres_server: PostgresServer) -> str:
    """A database of this test's own: reference rows belong to every channel of a table."""
    return postgres_server.create_database(f"interop_{uuid.uuid4().hex[:12]}")


def _broker(url: str, table: str | None = TABLE) -> Broker:
    return Broker("postgres", url, url, table=table, channel="memoria_sync")


def _text(region: Region, memory_id: str) -> str | None:
    return next((m.text for m in region.store.list_memories() if m.id == memory_id), None)


def _cursor(region: Region) -> str | None:
    assert region.sync.backend is not None
    return region.store.get_cursor(f"{region.name}|{region.sync.backend.source_id}")


def test_reference_publisher_on_a_shared_table(database: str, tmp_path: Path) -> None:
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA infra")
    reference = PostgresReferencePeer(database, "memoria_sync", TABLE)
    reference.create_table()  # the reference region was there first, with its layout
    reference.publish(capture("memory.created"))
    b = Region("region-b", sqlite_url(tmp_path, "b"), _broker(database).sync(reader=True, floor=0))
    b.start()
    try:
        # B adopts the table in place and replays what the reference journaled before it came
        wait_until(lambda: _text(b, REF_ID) == "met Ana at the harbour", what="the replayed create")
        for name in CAPTURES[1:]:
            reference.publish(capture(name))  # INSERT (payload only), then NOTIFY
        wait_until(lambda: REF_ID not in b.ids(), what="the delete")
        for name in CAPTURES:
            reference.publish(capture(name))  # all again: each now heard twice (row + NOTIFY)
        with psycopg.connect(database) as conn:
            rows = conn.execute(f"SELECT max(id), count(*) FROM {TABLE}").fetchone()
            columns = conn.execute(
                "SELECT column_name, is_nullable FROM information_schema.columns "
                "WHERE table_schema = 'infra' AND table_name = 'memoria_sync_events'"
            ).fetchall()
        assert rows is not None and rows[1] == 8  # the reference's INSERTs still fit
        assert dict(columns)["channel"] == "YES" and dict(columns)["event_id"] == "YES"
        wait_until(lambda: _cursor(b) == str(rows[0]), what="B's position over every row")
        assert b.ids() == set()  # the create heard again after the delete changes nothing
        assert b.count("memoria_sync_events_applied_total") == 4  # each event once
        assert b.count("memoria_sync_events_dropped_total", reason="duplicate") >= 8
    finally:
        b.stop()
        reference.close()


def test_reference_notify_only_events_are_applied(database: str, tmp_path: Path) -> None:
    reference = PostgresReferencePeer(database, "memoria_sync", table=None)
    b = Region("region-b", sqlite_url(tmp_path, "b"), _broker(database).sync(reader=True))
    b.start()
    try:
        wait_until(lambda: b.sync.health().listener_connected is True, what="listener")
        before = _cursor(b)
        reference.publish(capture("memory.created"))
        wait_until(lambda: REF_ID in b.ids(), what="the NOTIFY-only create")
        reference.publish(capture("memory.updated"))
        wait_until(lambda: "Luis" in (_text(b, REF_ID) or ""), what="the NOTIFY-only update")
        assert _cursor(b) == before  # a NOTIFY is not a journal position
    finally:
        b.stop()
        reference.close()


def test_our_writes_reach_a_reference_receiver(database: str, tmp_path: Path) -> None:
    receiver = ReferenceReceiver(floor=0)
    reference = PostgresReferencePeer(database, "memoria_sync", receiver=receiver)
    reference.listen()
    raw = psycopg.connect(database, autocommit=True)
    raw.execute("LISTEN memoria_sync")
    try:
        with two_regions(_broker(database), tmp_path, a_range=(0, 15), b_range=(0, 15)) as (a, b):
            mid = a.write("met Ana", y=4)
            private = a.write("my diagnosis", y=-12)
            wait_until(lambda: receiver.text(mid) == "met Ana", what="the create")
            a.writes.update_memory(mid, {"text": "met Ana and Luis"})
            wait_until(lambda: receiver.text(mid) == "met Ana and Luis", what="the update")
            big = a.write("é" * 6000, y=1)  # 12 kB of text: too large for one NOTIFY
            wait_until(lambda: big in b.ids(), what="the big memory at our region")
            assert _text(b, big) == "é" * 6000  # ours read it whole from the journal
            a.writes.delete_memory(mid)
            wait_until(lambda: mid not in receiver.rows, what="the delete")
            a.writes.delete_memory(big)
            wait_until(lambda: ("memory.deleted", big) in receiver.applied, what="big's delete")
            assert private not in receiver.rows and private not in receiver.cache
            assert big not in receiver.rows  # a stub: no content for a reference receiver
            assert receiver.applied == [
                ("memory.created", mid),
                ("memory.updated", mid),
                ("memory.deleted", mid),
                ("memory.deleted", big),
            ]
        notes = [json.loads(n.payload) for n in raw.notifies(timeout=0.5)]
        stubs = [n for n in notes if n.get("truncated")]
        assert [s["payload"]["memory_id"] for s in stubs] == [big]
        assert stubs[0]["action"] == "memory.created" and stubs[0]["payload"]["privacy"] == 1.0
        assert all(len(json.dumps(n).encode()) < NOTIFY_LIMIT for n in notes)
    finally:
        raw.close()
        reference.close()


def test_guide_checklist_1_region_b_receives_the_notification(
    database: str, tmp_path: Path
) -> None:
    """ "Trigger a memory write in Region A and confirm Region B receives the corresponding
    memoria_sync_events notification", literally: LISTEN memoria_sync on a plain connection.
    The regions leave the channel unset: memoria_sync is PostgreSQL's default."""
    listener = psycopg.connect(database, autocommit=True)
    listener.execute("LISTEN memoria_sync")
    broker = _broker(database)
    a = Region("region-a", sqlite_url(tmp_path, "a"), _unset_channel(broker, reader=False))
    b = Region("region-b", sqlite_url(tmp_path, "b"), _unset_channel(broker, reader=True))
    assert a.settings.sync.channel == b.settings.sync.channel == "memoria_sync"
    a.start()
    b.start()
    try:
        mid = a.write("heartbeat from region A", y=3)
        wait_until(lambda: mid in b.ids(), what="the write at region B")
        notes = [json.loads(n.payload) for n in listener.notifies(timeout=2, stop_after=1)]
        (note,) = notes
        assert note["action"] == "memory.created" and note["entity_id"] == mid
        assert note["payload"]["snapshot"]["text"] == "heartbeat from region A"  # the whole event
        assert (
            note["payload"]["replica"]["record"]["processed_data"]["text"]
            == note["payload"]["snapshot"]["text"]
        )
        with psycopg.connect(database) as conn:
            row = conn.execute(
                f"SELECT payload FROM {TABLE} WHERE id = %s", (note["journal_id"],)
            ).fetchone()
        assert row is not None and row[0]["event_id"] == note["event_id"]  # its journal row
    finally:
        a.stop()
        b.stop()
        listener.close()


def _unset_channel(broker: Broker, *, reader: bool) -> SyncSettings:
    """The broker's settings as a user who never set MEMORIA_SYNC__CHANNEL has them."""
    given = broker.sync(reader=reader).model_dump(exclude={"channel"})
    given["connection_url"] = broker.subscribe_url if reader else broker.publish_url
    return SyncSettings(**given)


def test_a_forged_notify_cannot_move_the_cursor(database: str, tmp_path: Path) -> None:
    with two_regions(_broker(database), tmp_path) as (a, b):
        first = a.write("first", y=0)
        wait_until(lambda: first in b.ids(), what="the first write")
        with psycopg.connect(database, autocommit=True) as conn:
            conn.execute("SELECT pg_notify('memoria_sync', %s)", ('{"journal_id": 999999999}',))
            conn.execute(
                "SELECT pg_notify('memoria_sync', %s)",
                ('{"journal_id": 999999999, "truncated": true, "action": "memory.created"}',),
            )
        second = a.write("second", y=0)
        wait_until(lambda: second in b.ids(), what="the write after the forgeries")
        position = _cursor(b)
        assert position is not None and int(position) < 1000


@pytest.fixture
def restartable() -> Iterator[PostgresServer]:
    server = PostgresServer()
    server.start()
    yield server
    server.destroy()


def test_mixed_fleet_both_ways_across_a_broker_restart(
    restartable: PostgresServer, tmp_path: Path
) -> None:
    url = restartable.create_database("fleet")
    receiver = ReferenceReceiver(floor=0)
    reference = PostgresReferencePeer(url, "memoria_sync", TABLE, receiver)
    reference.listen()
    with two_regions(_broker(url), tmp_path, a_range=(0, 15), b_range=(0, 15)) as (a, b):
        wait_until(lambda: b.sync.health().listener_connected is True, what="listener")
        before = a.write("before the restart", y=2)
        reference.publish(capture("memory.created"))
        for region in (a, b):
            wait_until(lambda r=region: {before, REF_ID} <= r.ids(), what=region.name)
        wait_until(lambda: receiver.text(before) == "before the restart", what="ref receiver")

        restartable.stop()
        during = a.write("while PostgreSQL is down", y=3)  # kept in region A's outbox
        reference.close()  # the reference's listener and publisher do not survive it
        restartable.start()

        wait_until(lambda: during in b.ids(), timeout=40, what="the queued write at B")
        receiver_after = ReferenceReceiver(floor=0)
        reference = PostgresReferencePeer(url, "memoria_sync", TABLE, receiver_after)
        reference.listen()
        after = a.write("after the restart", y=4)
        reference.publish(capture("memory.updated"))
        wait_until(lambda: receiver_after.text(after) == "after the restart", what="ref receiver")
        for region in (a, b):
            wait_until(
                lambda r=region: _text(r, REF_ID) == "met Ana and Luis at the harbour",
                what=f"the reference's update at {region.name}",
            )
        wait_until(lambda: after in b.ids(), what="the write after the restart at B")
        assert {before, during, after, REF_ID} <= b.ids()
        assert b.total("memoria_sync_events_applied_total") == 5  # each event once
        assert len(set(receiver.applied)) == len(receiver.applied)
        assert len(set(receiver_after.applied)) == len(receiver_after.applied)
    reference.close()
