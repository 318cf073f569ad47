"""PostgreSQL backend: LISTEN/NOTIFY carrying the whole event, a JSONB journal table for replay.

With ``table`` set (schema-qualified names such as ``infra.memoria_sync_events`` work; schema and
table are created on first use, in the contract's layout: see :mod:`.pg_journal`), a publish is
one statement: it takes the journal's advisory lock (so ids are assigned in commit order),
appends the batch and NOTIFYs each row with the whole event, as reference receivers expect,
plus its ``journal_id``. Without a table, a publish only NOTIFYs.

Our subscribers LISTEN, then catch up from the journal, then follow the channel:

* a NOTIFY with ``journal_id`` is only a hint to read the journal after the last position
  applied; positions advance only over rows read from the table, so a forged NOTIFY (say one
  with a huge ``journal_id``) can never move a subscriber past events it has not seen;
* any other NOTIFY is a whole event from a reference publisher (or ours without a table) and is
  applied as it comes, without a position; if the same event is also a row of the journal (a
  reference publisher with the table set), its content-derived id makes the second one a no-op.

Events of 8000 bytes and more do not fit in a NOTIFY. With a table, reference receivers get a
stub (envelope, ``memory_id``, ``namespace``, ``privacy``, ``"truncated": true``: enough to
apply a deletion, no content), ours read the row. Without a table, reference receivers get the
same stub and ours the event in numbered chunks, each a JSON object in a namespace no reference
receiver handles.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import threading
import time
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql

from ..errors import BrokerRefused, BrokerUnavailable
from ..settings import mask_url
from .base import BEGINNING, BatchHandler, Subscription, SyncBackend
from .events import Delivery, decode
from .pg_journal import JOURNAL_MARK, Journal, classify
from .pg_notes import CHUNK_MARK, STUB_MARK, Chunks, notes_for
from .trust import CATCH_UP_BYTES, MAX_EVENT_BYTES

log = logging.getLogger("memoria.sync")

NOTIFY_LIMIT = 7900  # bytes; PostgreSQL refuses payloads of 8000 bytes and more
_CATCH_UP_BATCH = 2000  # rows read at a time, at most CATCH_UP_BYTES of them
_IDLE_RECHECK = 10.0  # seconds without notifications before re-reading the journal anyway
# a row after a missing id: that id may be a reference publisher's INSERT (which takes no
# advisory lock) still committing, so wait for it a little before skipping it as rolled back
_GAP_WAIT = 1.0  # seconds since we first saw the gap
_GAP_OLD = 10.0  # seconds of age of the row after it: an old gap is never filled


def connect(dsn: str) -> psycopg.Connection[Any]:
    """A sync connection that notices a dead peer: TCP keepalives (about 15 s), and a
    server-side statement timeout so a slow server cannot hold a publish for ever. Text comes
    back as UTF-8 whatever the database's encoding: on a SQL_ASCII database psycopg would
    otherwise return bytes, and the journal's column names would not be recognised."""
    return psycopg.connect(
        dsn,
        autocommit=True,
        client_encoding="UTF8",
        connect_timeout=3,
        keepalives=1,
        keepalives_idle=5,
        keepalives_interval=2,
        keepalives_count=3,
        options="-c statement_timeout=30000",
    )


class _PostgresSubscription(Subscription):
    def __init__(self, backend: PostgresSyncBackend, handler: BatchHandler, after: str | None):
        super().__init__(f"postgres-listener[{backend.channel}]", handler, after)
        self.backend = backend
        self.journal = backend.journal
        self.conn: psycopg.Connection[Any] | None = None
        self.chunks = Chunks()
        self._gap: tuple[int, float] | None = None  # (missing id, when first seen)

    def session(self) -> None:
        conn = connect(self.backend.dsn)
        self.conn = conn
        try:
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.backend.channel)))
            if self.journal is not None:
                self.journal.ensure(conn)
                if self.position is None:  # "from now"
                    self.position = str(self.journal.last_id(conn))
            self.connected()
            self.hand_over_live([])  # what a failed handler left
            recheck_at = 0.0  # catch up at once
            while not self.stopping.is_set():
                wait = max(0.0, min(0.5, recheck_at - time.monotonic()))
                notes = list(conn.notifies(timeout=wait, stop_after=1))
                while notes and len(notes) < 1000:
                    more = list(conn.notifies(timeout=0, stop_after=1000))
                    if not more:
                        break
                    notes.extend(more)
                direct, hinted = self.sort([n.payload for n in notes])
                self.hand_over_live(direct)
                if self.journal is not None and (hinted or time.monotonic() >= recheck_at):
                    gap = self.catch_up(conn)
                    recheck_at = time.monotonic() + (0.2 if gap else _IDLE_RECHECK)
        finally:
            conn.close()

    def sort(self, payloads: list[str]) -> tuple[list[Delivery], bool]:
        """(events to apply as they are, whether a NOTIFY pointed at the journal)."""
        direct: list[Delivery] = []
        hinted = False
        for payload in payloads:
            if payload.startswith(JOURNAL_MARK):
                if self.journal is not None:
                    hinted = True  # the event itself comes from the table, with its position
                elif '"truncated":true' in payload[:40]:
                    direct.append(
                        Delivery(
                            None,
                            None,
                            "an event too large for NOTIFY sits in a journal "
                            "table; set sync.table to the publisher's to receive it",
                            payload[:200],
                        )
                    )
                else:
                    direct.append(decode(payload, None))
            elif payload.startswith(CHUNK_MARK):
                given_up = self.chunks.dropped
                joined = self.chunks.add(payload)
                if joined is not None:
                    direct.append(decode(joined, None))
                if self.chunks.dropped > given_up:
                    self.lost("chunks", self.chunks.dropped - given_up)
            elif payload.startswith(STUB_MARK):
                continue  # for reference receivers: the chunks that follow carry the event
            else:
                direct.append(decode(payload, None))  # a whole event: a reference publisher's
        return direct, hinted

    def _last_id(self) -> int:
        return 0 if self.position in (None, BEGINNING) else int(self.position or 0)

    def catch_up(self, conn: psycopg.Connection[Any]) -> bool:
        """Hand over journal rows after our position; True if stopped at a recent gap."""
        assert self.journal is not None
        query = self.journal.read_sql()
        while not self.stopping.is_set():
            last = self._last_id()
            params = {
                "max": MAX_EVENT_BYTES,
                "channel": self.backend.channel,
                "after": last,
                "limit": _CATCH_UP_BATCH,
                "budget": CATCH_UP_BYTES,
            }
            rows = conn.execute(query, params).fetchall()
            if not rows:
                return False
            batch: list[Delivery] = []
            for jid, text, age, size in rows:
                if jid != last + 1 and not self._gap_settled(last + 1, age):
                    self.hand_over(batch)
                    return True
                last = jid
                if size is not None and text is None:  # ours, but over the limit: not read
                    error = f"{size} bytes, over {MAX_EVENT_BYTES}"
                    batch.append(Delivery(None, str(jid), error, None, "oversized"))
                elif text is None:  # another channel's row: only the position moves over it
                    if batch and batch[-1].reason == "foreign":
                        batch.pop()
                    batch.append(Delivery(None, str(jid), reason="foreign"))
                else:
                    batch.append(decode(text, str(jid)))
            self._gap = None
            self.hand_over(batch)
        return False

    def _gap_settled(self, missing: int, age: float) -> bool:
        if age > _GAP_OLD:
            return True
        now = time.monotonic()
        if self._gap is None or self._gap[0] != missing:
            self._gap = (missing, now)
        return now - self._gap[1] > _GAP_WAIT


class PostgresSyncBackend(SyncBackend):
    name = "postgres"

    def __init__(
        self,
        dsn: str,
        channel: str = "memoria_sync",
        table: str | None = None,
        *,
        retention: dt.timedelta = dt.timedelta(days=7),
    ) -> None:
        self.dsn = dsn
        self.channel = channel
        self.table = table or None
        self.journal = Journal(self.table) if self.table else None
        # journal rows older than this are deleted (at most hourly, by publishers): a region
        # away for longer than that cannot catch up from the journal
        self.retention = retention
        # never pruned: the first publish prunes (not 0.0, which is less than an hour before
        # "now" on a machine booted less than an hour ago: time.monotonic() counts from boot)
        self._last_prune = -math.inf
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()
        self._subs: list[Subscription] = []

    @property
    def source_id(self) -> str:
        return f"postgres|{mask_url(self.dsn)}|{self.table or '-'}|{self.channel}"

    def _publisher(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.dsn)
        if self.journal is not None:
            self.journal.ensure(self._conn)
        return self._conn

    def publish_encoded(self, events: Sequence[tuple[str, str]]) -> None:
        if not events:
            return
        where = f"postgres at {mask_url(self.dsn)}"
        if self.table:
            where += f", table {self.table}"
        with self._lock:
            try:
                conn = self._publisher()
                if self.journal is not None:
                    conn.execute(
                        self.journal.publish_sql(),
                        {
                            "lock": self.journal.lock_key,
                            "ids": [event_id for event_id, _ in events],
                            "events": [raw for _, raw in events],
                            "channel": self.channel,
                            "limit": NOTIFY_LIMIT,
                        },
                    )
                else:
                    conn.execute(
                        "SELECT count(pg_notify(%s, note)) FROM unnest(%b::text[]) AS note",
                        (self.channel, notes_for(events, NOTIFY_LIMIT)),
                    )
            except BrokerRefused:
                self._forget_layout()
                raise
            except psycopg.Error as exc:
                error = classify(exc, where)
                if isinstance(error, BrokerRefused):
                    self._forget_layout()  # a table dropped or altered meanwhile: look again
                elif isinstance(error, BrokerUnavailable):
                    self._drop_connection()
                raise error from None
            self._maybe_prune()

    def _forget_layout(self) -> None:
        if self.journal is not None:
            self.journal.ready = False

    def _maybe_prune(self) -> None:
        if self.journal is None or time.monotonic() - self._last_prune < 3600:
            return
        self._last_prune = time.monotonic()
        try:
            assert self._conn is not None
            deleted = self.journal.prune(self._conn, self.channel, self.retention)
            if deleted:
                log.info(
                    "postgres journal %s: pruned %d events older than %s",
                    self.table,
                    deleted,
                    self.retention,
                )
        except psycopg.Error as exc:
            log.warning("postgres journal %s: pruning failed: %s", self.table, exc)

    def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    def subscribe_batches(self, handler: BatchHandler, *, after: str | None = None) -> Subscription:
        if self.table is None:
            log.warning(
                "postgres sync on channel %s has no journal table: a subscriber that is "
                "disconnected misses events; set MEMORIA_SYNC__TABLE to make them replayable",
                self.channel,
            )
        sub = _PostgresSubscription(self, handler, after)
        sub.start()
        self._subs.append(sub)
        return sub

    def ping(self) -> None:
        """A fresh, short connection: never waits behind a publish in flight."""
        try:
            with psycopg.connect(
                self.dsn, connect_timeout=2, options="-c statement_timeout=2000"
            ) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error as exc:
            raise BrokerUnavailable(f"postgres at {mask_url(self.dsn)}: {exc}") from None

    def close(self) -> None:
        self.close_publisher()
        for sub in self._subs:
            sub.close()
        self._subs.clear()
        if self._lock.acquire(timeout=5):
            try:
                self._drop_connection()
            finally:
                self._lock.release()
        else:
            log.warning("postgres sync: a publish is stuck; leaving its connection behind")
