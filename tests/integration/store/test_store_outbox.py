"""The outbox deletes exactly what was published: never another region's rows, never a row
that committed late with a lower sequence number."""

from __future__ import annotations

import random
import threading

import pytest

from memoria.store import MemoryStore
from memoria.sync.events import Action, EntityType, SyncEvent
from testbed import PostgresServer

pytestmark = pytest.mark.integration


def _event(origin: str, i: int) -> SyncEvent:
    return SyncEvent(Action.CREATE, EntityType.MEMORY, "n", f"{origin}{i}", {"y_coord": 0}, origin)


def _write(store: MemoryStore, origin: str, i: int) -> None:
    store.create_memory(
        namespace="n",
        text=f"{origin}{i}",
        x_coord=0.0,
        y_coord=0.0,
        z_coord=0.0,
        origin=origin,
        make_event=lambda _m: _event(origin, i),
    )


def test_removing_a_batch_keeps_other_regions_rows(postgres_server: PostgresServer) -> None:
    store = MemoryStore(postgres_server.create_database(f"ob_{random.randrange(1 << 30)}"))
    for i in range(5):
        _write(store, "a", i)
        _write(store, "b", i)  # interleaved sequence numbers in one shared store
    batch = store.outbox_batch("a")
    assert len(batch) == 5
    store.outbox_remove("a", [r.seq for r in batch])
    assert store.outbox_depth("a") == 0
    assert store.outbox_depth("b") == 5
    store.close()


def test_a_late_commit_with_a_lower_seq_is_not_removed(postgres_server: PostgresServer) -> None:
    url = postgres_server.create_database(f"ob_{random.randrange(1 << 30)}")
    store = MemoryStore(url)
    import psycopg

    started, release = threading.Event(), threading.Event()

    def slow_writer() -> None:
        with psycopg.connect(url) as conn, conn.transaction():
            conn.execute(
                "INSERT INTO sync_outbox (origin, event_id, body, y_coord, created_at) "
                "VALUES ('a', 'late', %s, 0, 'now')",
                (_event("a", 99).to_json(),),
            )
            started.set()
            release.wait(10)  # holds a lower seq, uncommitted, while others commit

    thread = threading.Thread(target=slow_writer)
    thread.start()
    started.wait(10)
    _write(store, "a", 1)  # higher seq, committed first
    batch = store.outbox_batch("a")
    assert [r.event_id for r in batch] != [] and all(r.event_id != "late" for r in batch)
    release.set()
    thread.join()
    store.outbox_remove("a", [r.seq for r in batch])
    left = store.outbox_batch("a")
    assert [r.event_id for r in left] == ["late"]  # still queued, it was never published
    store.close()
