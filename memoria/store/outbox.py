"""The transactional outbox: events written in the same transaction as the memory they
describe, tagged with the region that wrote them, read and deleted by the relay once the broker
has them."""

from __future__ import annotations

from collections.abc import Sequence

from ..sync.events import Action, SyncEvent
from .dialects import Database, Tx
from .records import OutboxRow, utcnow

# events whose content the relay re-checks against the privacy range; a deletion carries none
_CONTENT = (Action.CREATE, Action.UPDATE)


def enqueue(tx: Tx, event: SyncEvent | None) -> None:
    """Queue ``event`` (if any) in ``tx``, so it is sent exactly when the write commits."""
    if event is None:
        return
    y = event.payload.get("privacy") if event.action in _CONTENT else None
    tx.execute(
        "INSERT INTO sync_outbox (origin, event_id, body, y_coord, created_at) "
        "VALUES (?, ?, ?, ?, ?)",
        (
            event.origin,
            event.event_id,
            event.to_json(),
            float(y) if isinstance(y, int | float) else None,
            utcnow(),
        ),
    )


class Outbox:
    """The MemoryStore methods the relay uses."""

    db: Database

    def outbox_batch(self, origin: str, limit: int = 500) -> list[OutboxRow]:
        with self.db.transaction(write=False) as tx:
            rows = tx.execute(
                "SELECT seq, event_id, body, y_coord FROM sync_outbox WHERE origin = ? "
                "ORDER BY seq LIMIT ?",
                (origin, limit),
            ).fetchall()
        return [
            OutboxRow(int(r[0]), r[1], r[2], None if r[3] is None else float(r[3])) for r in rows
        ]

    def outbox_remove(self, origin: str, seqs: Sequence[int]) -> None:
        """Delete exactly the rows that were published. Not a seq range: on PostgreSQL a row
        with a lower seq may commit after a higher one was read, and another region sharing
        the store interleaves rows of its own; either would be deleted unpublished."""
        if not seqs:
            return
        marks = ", ".join("?" * len(seqs))
        with self.db.transaction(write=True) as tx:
            tx.execute(
                f"DELETE FROM sync_outbox WHERE origin = ? AND seq IN ({marks})",
                (origin, *seqs),
            )

    def outbox_depth(self, origin: str) -> int:
        with self.db.transaction(write=False) as tx:
            row = tx.execute(
                "SELECT COUNT(*) FROM sync_outbox WHERE origin = ?", (origin,)
            ).fetchone()
        return int(row[0])
