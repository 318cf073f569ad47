"""Memories written here (create, change, delete: each write queues its sync event in the same
transaction) and every read of memories, whichever region wrote them.

A write's version is a hybrid clock in microseconds (:func:`~memoria.sync.trust.next_version`):
above every version of the memory seen so far and at least the writer's clock, so the region
that owns a memory repairs, with its next write, any divergence a peer forced on the others.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable
from typing import Any

from ..errors import MemoryNotFound, StoreError
from ..sync.events import SyncEvent
from ..sync.trust import next_version
from .decrement import last_date
from .dialects import Database, Tx
from .outbox import enqueue
from .records import MEMORY_COLUMNS, MEMORY_MARKS, EventFactory, Memory, memory_from_row, utcnow


def _get(tx: Tx, memory_id: str, *, lock: bool = False) -> Memory | None:
    row = tx.execute(
        f"SELECT {MEMORY_COLUMNS} FROM memories WHERE id = ? AND NOT deleted"
        + (tx.for_update if lock else ""),
        (memory_id,),
    ).fetchone()
    return memory_from_row(row) if row else None


class Memories:
    """The MemoryStore methods that write and read memories."""

    db: Database

    # -- writes ------------------------------------------------------------------------------

    def create_memory(
        self,
        *,
        namespace: str,
        text: str,
        x_coord: float,
        y_coord: float,
        z_coord: float,
        origin: str,
        make_event: EventFactory,
        memory_id: str | None = None,
    ) -> Memory:
        now = utcnow()
        version = next_version(0)
        memory = Memory(
            id=memory_id or uuid.uuid4().hex,
            namespace=namespace,
            text=text,
            x_coord=x_coord,
            y_coord=y_coord,
            z_coord=z_coord,
            created_at=now,
            updated_at=now,
            version=version,
            origin=origin,
        )
        with self.db.transaction(write=True) as tx:
            memory = dataclasses.replace(memory, x_as_of=last_date(tx))
            tx.execute(
                f"INSERT INTO memories ({MEMORY_COLUMNS}) VALUES ({MEMORY_MARKS})",
                (
                    memory.id,
                    namespace,
                    text,
                    x_coord,
                    y_coord,
                    z_coord,
                    now,
                    now,
                    version,
                    origin,
                    memory.x_as_of,
                ),
            )
            enqueue(tx, make_event(memory))
        return memory

    def update_memory(
        self,
        memory_id: str,
        changes: dict[str, Any],
        *,
        origin: str,
        make_event: Callable[[Memory, Memory], SyncEvent | None],
    ) -> Memory:
        allowed = {"text", "namespace", "x_coord", "y_coord", "z_coord"}
        unknown = set(changes) - allowed
        if unknown:
            raise StoreError(f"cannot change {sorted(unknown)}; allowed: {sorted(allowed)}")
        with self.db.transaction(write=True) as tx:
            before = _get(tx, memory_id, lock=True)
            if before is None:
                raise MemoryNotFound(memory_id)
            values = {**before.to_payload(), **changes}
            after = Memory(
                id=before.id,
                namespace=values["namespace"],
                text=values["text"],
                x_coord=float(values["x_coord"]),
                y_coord=float(values["y_coord"]),
                z_coord=float(values["z_coord"]),
                created_at=before.created_at,
                updated_at=utcnow(),
                version=next_version(before.version),
                origin=origin,
                # a new x_coord from the caller is as of today's state of the store
                x_as_of=last_date(tx) if "x_coord" in changes else before.x_as_of,
            )
            tx.execute(
                "UPDATE memories SET namespace = ?, text = ?, x_coord = ?, y_coord = ?, "
                "z_coord = ?, updated_at = ?, version = ?, origin = ?, x_as_of = ? WHERE id = ?",
                (
                    after.namespace,
                    after.text,
                    after.x_coord,
                    after.y_coord,
                    after.z_coord,
                    after.updated_at,
                    after.version,
                    after.origin,
                    after.x_as_of,
                    after.id,
                ),
            )
            enqueue(tx, make_event(before, after))
        return after

    def delete_memory(self, memory_id: str, *, origin: str, make_event: EventFactory) -> Memory:
        """Delete locally, keeping a tombstone (id and version) so late updates stay deleted."""
        with self.db.transaction(write=True) as tx:
            before = _get(tx, memory_id, lock=True)
            if before is None:
                raise MemoryNotFound(memory_id)
            version = next_version(before.version)
            tx.execute(
                "UPDATE memories SET deleted = TRUE, text = '', version = ?, origin = ?, "
                "updated_at = ? WHERE id = ?",
                (version, origin, utcnow(), memory_id),
            )
            # the event carries the tombstone's version: receivers order it as this store does
            enqueue(tx, make_event(dataclasses.replace(before, version=version)))
        return before

    # -- reads -------------------------------------------------------------------------------

    def get_memory(self, memory_id: str) -> Memory:
        with self.db.transaction(write=False) as tx:
            found = _get(tx, memory_id)
        if found is None:
            raise MemoryNotFound(memory_id)
        return found

    def list_memories(
        self, namespace: str | None = None, limit: int = 100, offset: int = 0
    ) -> list[Memory]:
        where, params = "NOT deleted", []
        if namespace is not None:
            where += " AND namespace = ?"
            params.append(namespace)
        with self.db.transaction(write=False) as tx:
            rows = tx.execute(
                f"SELECT {MEMORY_COLUMNS} FROM memories WHERE {where} "
                "ORDER BY created_at, id LIMIT ? OFFSET ?",
                (*params, limit, offset),
            ).fetchall()
        return [memory_from_row(r) for r in rows]

    def count_memories(self) -> int:
        with self.db.transaction(write=False) as tx:
            row = tx.execute("SELECT COUNT(*) FROM memories WHERE NOT deleted").fetchone()
        return int(row[0])
