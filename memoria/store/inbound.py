"""Events from other regions, applied once: ``sync_inbox`` remembers every event id applied,
``sync_cursors`` each source's journal position, both committed with the changes they record.
"""

from __future__ import annotations

import bisect
import dataclasses
import datetime as dt
from collections.abc import Sequence

from ..sync.events import Action, SyncEvent
from .decrement import decrement_dates, remote_decrement
from .dialects import Database, Tx
from .records import (
    MEMORY_COLUMNS,
    MEMORY_MARKS,
    UNKNOWN_AS_OF,
    DecrementOutcome,
    InboundOp,
    InboundResult,
    Memory,
    utcnow,
)


class Inbound:
    """The MemoryStore methods the sync coordinator's subscriber uses."""

    db: Database

    def get_cursor(self, source: str) -> str | None:
        with self.db.transaction(write=False) as tx:
            row = tx.execute(
                "SELECT position FROM sync_cursors WHERE source = ?", (source,)
            ).fetchone()
        return row[0] if row else None

    def apply_inbound(
        self, ops: Sequence[InboundOp], *, source: str, position: str | None
    ) -> InboundResult:
        """Apply a batch of inbound events and advance ``source``'s cursor, atomically.

        Every event id is recorded in ``sync_inbox`` first: one seen before is a duplicate and
        changes nothing. Memories follow last-writer-wins on (version, origin), so events that
        arrive out of order per memory converge on the newest version.
        """
        applied = duplicates = skipped = stale = refused = 0
        outcomes: list[DecrementOutcome] = []
        now = utcnow()
        with self.db.transaction(write=True) as tx:
            dates: list[str] | None = None  # this store's decrement log, read when first needed
            for op in ops:
                _defer(tx, op, now)  # not in sync_inbox: applied once its token is allowed
            for op in (o for o in ops if o.kind != "defer"):
                fresh = tx.execute(
                    "INSERT INTO sync_inbox (event_id, received_at) VALUES (?, ?) "
                    "ON CONFLICT (event_id) DO NOTHING",
                    (op.event_id, now),
                ).rowcount
                if not fresh:
                    duplicates += 1
                    continue
                if op.kind == "upsert" and op.memory is not None:
                    if dates is None:
                        dates = decrement_dates(tx)
                    _upsert_remote(tx, _rebase(op.memory, dates), deleted=False)
                    applied += 1
                elif op.kind == "withdraw" and op.memory_id is not None:
                    done = _withdraw_op(tx, op, op.memory_id)
                    applied += done
                    refused += not done
                elif op.kind == "decrement" and op.event is not None:
                    tx.execute("DELETE FROM sync_deferred WHERE event_id = ?", (op.event_id,))
                    outcome = remote_decrement(tx, op.event)
                    outcomes.append(outcome)
                    if outcome.ran and dates is not None:
                        bisect.insort(dates, outcome.date)
                    applied += outcome.ran
                    stale += not outcome.ran and outcome.reason == "stale"
                    skipped += not outcome.ran and outcome.reason != "stale"
                else:
                    skipped += 1
            if position is not None:
                tx.execute(
                    "INSERT INTO sync_cursors (source, position, updated_at) VALUES (?, ?, ?) "
                    "ON CONFLICT (source) DO UPDATE SET position = excluded.position, "
                    "updated_at = excluded.updated_at",
                    (source, position, now),
                )
        return InboundResult(applied, duplicates, skipped, stale, outcomes, refused)

    def deferred(self) -> list[SyncEvent]:
        """The decrements kept for later (see ``defer``), oldest first."""
        with self.db.transaction(write=False) as tx:
            rows = tx.execute(
                "SELECT body FROM sync_deferred ORDER BY received_at, event_id"
            ).fetchall()
        return [SyncEvent.from_json(str(row[0])) for row in rows]

    def drop_deferred(self, event_id: str) -> None:
        with self.db.transaction(write=True) as tx:
            tx.execute("DELETE FROM sync_deferred WHERE event_id = ?", (event_id,))

    def prune_inbox(self, older_than: dt.timedelta) -> int:
        cutoff = (dt.datetime.now(dt.UTC) - older_than).isoformat(timespec="microseconds")
        with self.db.transaction(write=True) as tx:
            return int(
                tx.execute("DELETE FROM sync_inbox WHERE received_at < ?", (cutoff,)).rowcount
            )


def _defer(tx: Tx, op: InboundOp, now: str) -> None:
    if op.kind == "defer" and op.event is not None:
        tx.execute(
            "INSERT INTO sync_deferred (event_id, body, received_at) VALUES (?, ?, ?) "
            "ON CONFLICT (event_id) DO NOTHING",
            (op.event_id, op.event.to_json(), now),
        )


def _upsert_remote(tx: Tx, m: Memory, *, deleted: bool) -> None:
    tx.execute(
        f"INSERT INTO memories ({MEMORY_COLUMNS}, deleted) "
        f"VALUES ({MEMORY_MARKS}, ?) "
        "ON CONFLICT (id) DO UPDATE SET namespace = excluded.namespace, "
        "text = excluded.text, x_coord = excluded.x_coord, y_coord = excluded.y_coord, "
        "z_coord = excluded.z_coord, updated_at = excluded.updated_at, "
        "version = excluded.version, origin = excluded.origin, "
        "x_as_of = excluded.x_as_of, deleted = excluded.deleted "
        # newer version wins; on equal versions the larger origin wins, except over a
        # tombstone: a delete concurrent with an update ends deleted everywhere
        "WHERE memories.version < excluded.version OR "
        "(memories.version = excluded.version AND memories.origin < excluded.origin "
        "AND NOT memories.deleted)",
        (
            m.id,
            m.namespace,
            m.text,
            m.x_coord,
            m.y_coord,
            m.z_coord,
            m.created_at,
            m.updated_at,
            m.version,
            m.origin,
            m.x_as_of,
            deleted,
        ),
    )


def _withdraw_op(tx: Tx, op: InboundOp, memory_id: str) -> bool:
    """Apply a withdrawal or a delete; False if the delete is refused."""
    origin = (op.event.origin if op.event is not None else None) or ""
    deleting = op.event is not None and op.event.action is Action.DELETE
    if deleting and _foreign_delete_loses(tx, memory_id, op.version, origin):
        return False
    _withdraw(tx, memory_id, op.version, origin)
    return True


def _foreign_delete_loses(tx: Tx, memory_id: str, version: int | None, origin: str) -> bool:
    """Whether a delete from ``origin`` must be refused: our live copy was last written by
    another region, and the delete does not win by the rule an update from there would have to
    pass (a newer version; on an equal one, the larger origin). A delete from the region that
    wrote the copy keeps its edge: on an equal version it wins, so a delete concurrent with an
    update ends deleted everywhere."""
    row = tx.execute(
        "SELECT origin, version FROM memories WHERE id = ? AND NOT deleted", (memory_id,)
    ).fetchone()
    if row is None or str(row[0] or "") == origin:
        return False
    held_by, held = str(row[0] or ""), int(row[1])
    mine = version if version is not None else 1
    return not (held < mine or (held == mine and held_by < origin))


def _withdraw(tx: Tx, memory_id: str, version: int | None, origin: str) -> None:
    """Drop our copy (content and all) if we have one; never create a row for it.

    Used for deletes at the origin and for updates that left our privacy range: the newer
    version wins, so a late, older update cannot bring the content back.
    """
    newer_than = version if version is not None else 1
    tx.execute(
        "UPDATE memories SET deleted = TRUE, text = '', version = ?, origin = ?, "
        "updated_at = ? WHERE id = ? AND version <= ?",
        (newer_than, origin, utcnow(), memory_id, newer_than),
    )


def _rebase(memory: Memory, dates: list[str]) -> Memory:
    """A peer's memory, with x_coord moved to what this store's decrements would have made it:
    minus every date this store decremented after the one the peer's value reflects."""
    last = dates[-1] if dates else ""
    if memory.x_as_of == UNKNOWN_AS_OF:
        # a peer that does not say (the guide's plain events): take its value as current
        return dataclasses.replace(memory, x_as_of=last)
    if memory.x_as_of >= last:
        return memory  # the peer saw as much as we did or more; our later runs skip it
    missed = len(dates) - bisect.bisect_right(dates, memory.x_as_of)
    return dataclasses.replace(memory, x_coord=memory.x_coord - missed, x_as_of=last)
