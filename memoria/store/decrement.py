"""The daily decrement, fenced: a date is claimed in ``service_metadata`` by compare-and-set
against the highest fencing token seen, so it is decremented once even by two processes that
both think they lead, whether the run is the leader's own or a peer's event."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from ..sync.events import SyncEvent
from .dialects import Database, Tx
from .outbox import enqueue
from .records import DecrementOutcome, utcnow

DECREMENT_KEYS = (
    "last_decrement_date",
    "last_decrement_by",
    "last_decrement_at",
    "last_decrement_token",
    "fencing_token",
)


def last_date(tx: Tx) -> str:
    """The last date decremented: what a memory's x_coord reflects when written now."""
    # FOR SHARE on PostgreSQL: a write waits for a decrement committing right now, so the
    # date it records is the one its row's x_coord really reflects
    row = tx.execute(
        "SELECT value FROM service_metadata WHERE key = 'last_decrement_date'" + tx.for_share
    ).fetchone()
    return str(row[0]) if row else ""


def decrement_dates(tx: Tx) -> list[str]:
    """Every date this store decremented, oldest first."""
    return [r[0] for r in tx.execute("SELECT date FROM decrement_log ORDER BY date").fetchall()]


def decrement(tx: Tx, date: str, *, token: int, by: str) -> DecrementOutcome:
    """Claim ``date`` with ``token`` and, if granted, decrement every memory, in ``tx``.

    The metadata rows are locked first; a token lower than the highest one seen (a stale
    leader) is refused, and so is a date not after the last one decremented.
    """
    rows = tx.execute(
        "SELECT key, value FROM service_metadata WHERE key IN (?, ?, ?, ?, ?)" + tx.for_update,
        DECREMENT_KEYS,
    ).fetchall()
    meta = {k: v for k, v in rows}
    if token < int(meta.get("fencing_token") or 0):
        return DecrementOutcome(date, False, "stale", last_by=meta.get("last_decrement_by"))
    if (meta.get("last_decrement_date") or "") >= date:
        return DecrementOutcome(date, False, "already", last_by=meta.get("last_decrement_by"))
    return DecrementOutcome(date, True, "ran", _decrement_rows(tx, date, token, by), by)


def _decrement_rows(tx: Tx, date: str, token: int, by: str) -> int:
    # a memory that came from a peer already decremented for this date is left alone
    rows = tx.execute(
        "UPDATE memories SET x_coord = x_coord - 1, x_as_of = ? WHERE NOT deleted AND x_as_of < ?",
        (date, date),
    ).rowcount
    tx.execute(
        "INSERT INTO decrement_log (date, ran_by, ran_at) VALUES (?, ?, ?) "
        "ON CONFLICT (date) DO NOTHING",
        (date, by, utcnow()),
    )
    meta = tx.execute("SELECT value FROM service_metadata WHERE key = 'fencing_token'").fetchone()
    highest = max(int(meta[0] or 0) if meta else 0, token)
    tx.executemany(
        "UPDATE service_metadata SET value = ? WHERE key = ?",
        [
            (date, "last_decrement_date"),
            (by, "last_decrement_by"),
            (utcnow(), "last_decrement_at"),
            (str(token), "last_decrement_token"),
            (str(highest), "fencing_token"),
        ],
    )
    return int(rows)


def remote_decrement(tx: Tx, event: SyncEvent) -> DecrementOutcome:
    """A peer leader's decrement event, applied in ``tx`` under the same fence as our own."""
    date = str(event.payload.get("date", ""))
    try:
        day = dt.date.fromisoformat(date)
    except ValueError:
        return DecrementOutcome(date, False, "invalid")
    if day > dt.datetime.now(dt.UTC).date() + dt.timedelta(days=1):
        # a date in the future would block every real date until then
        return DecrementOutcome(date, False, "invalid")
    token = event.payload.get("token", 0)
    token = token if isinstance(token, int) else 0
    return decrement(tx, date, token=token, by=event.origin or "")


class Decrements:
    """The MemoryStore methods of the decrement and its fencing token."""

    db: Database

    def run_decrement(
        self, date: str, *, token: int, region: str, make_event: Callable[[str], SyncEvent | None]
    ) -> DecrementOutcome:
        """The leader's fenced decrement for ``date`` (ISO ``YYYY-MM-DD``).

        One transaction: lock the metadata rows, refuse a token lower than the highest one seen
        (a stale leader) and a date not after the last one decremented, then decrement every
        memory, record who ran it, and queue the event for the peers.
        """
        with self.db.transaction(write=True) as tx:
            outcome = decrement(tx, date, token=token, by=region)
            if outcome.ran:
                enqueue(tx, make_event(date))
        return outcome

    def raise_fencing_token(self, token: int) -> None:
        """Remember the highest fencing token seen, so older leaders are refused from now on."""
        with self.db.transaction(write=True) as tx:
            row = tx.execute(
                "SELECT value FROM service_metadata WHERE key = 'fencing_token'" + tx.for_update
            ).fetchone()
            if int(row[0] or 0) < token:
                tx.execute(
                    "UPDATE service_metadata SET value = ? WHERE key = 'fencing_token'",
                    (str(token),),
                )

    def metadata(self) -> dict[str, str]:
        with self.db.transaction(write=False) as tx:
            rows = tx.execute("SELECT key, value FROM service_metadata").fetchall()
        return {k: v for k, v in rows}
