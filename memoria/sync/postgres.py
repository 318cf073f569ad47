"""PostgreSQL backend: LISTEN/NOTIFY for live delivery, a JSONB journal table for replay.

With ``table`` set (schema-qualified names such as ``infra.memoria_sync_events`` work; schema and
table are created on first use), each publish is one transaction that appends the events to the
journal and sends one NOTIFY per event carrying the event and its journal id. Publishers take a
transaction-scoped advisory lock on the table, so journal ids are assigned in commit order: a
subscriber that stores "last id applied" and later reads ``WHERE id > last`` can never skip an
event that committed late. Subscribers LISTEN first, then catch up from the journal, then follow
the notifications, skipping ids they have already seen; so nothing falls between the two.

NOTIFY payloads are limited to 8000 bytes. A larger event is sent as a pointer (``journal_id``
only) and read from the table; without a table it is split into numbered chunks that the
subscriber joins (notifications of one transaction arrive together and in order).

Without a table delivery is live only: a subscriber that is disconnected misses what is
published meanwhile. The runtime warns about that at start-up.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import threading
import time
import zlib
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql

from ..errors import BrokerUnavailable, EventFormatError, EventRejected
from ..settings import mask_url
from .base import BEGINNING, BatchHandler, Subscription, SyncBackend
from .events import Delivery, SyncEvent

log = logging.getLogger("memoria.sync")

NOTIFY_LIMIT = 7900  # bytes; PostgreSQL refuses payloads of 8000 bytes and more
_CHUNK_MARK = "\x1echunk:"
_CATCH_UP_BATCH = 2000
_IDLE_RECHECK = 10.0  # seconds without notifications before re-reading the journal anyway


def connect(dsn: str) -> psycopg.Connection[Any]:
    """A sync connection that notices a dead peer: TCP keepalives (about 15 s), and a
    server-side statement timeout so a slow server cannot hold a publish for ever."""
    return psycopg.connect(
        dsn,
        autocommit=True,
        connect_timeout=3,
        keepalives=1,
        keepalives_idle=5,
        keepalives_interval=2,
        keepalives_count=3,
        options="-c statement_timeout=30000",
    )


def _split_utf8(text: str, limit: int) -> list[str]:
    """Split ``text`` into pieces whose UTF-8 encoding is at most ``limit`` bytes."""
    data, pieces, start = text.encode(), [], 0
    while start < len(data):
        end = min(start + limit, len(data))
        while end < len(data) and (data[end] & 0xC0) == 0x80:  # not inside a character
            end -= 1
        pieces.append(data[start:end].decode())
        start = end
    return pieces


def _delivery(data: Any, position: str | None) -> Delivery:
    try:
        return Delivery(SyncEvent.from_dict(data), position)
    except EventFormatError as exc:
        return Delivery(None, position, str(exc), json.dumps(data)[:200])


class _PostgresSubscription(Subscription):
    def __init__(self, backend: PostgresSyncBackend, handler: BatchHandler, after: str | None):
        super().__init__(f"postgres-listener[{backend.channel}]", handler, after)
        self.backend = backend
        self.conn: psycopg.Connection[Any] | None = None
        self._chunks: dict[str, list[str]] = {}

    def session(self) -> None:
        backend = self.backend
        conn = connect(backend.dsn)
        self.conn = conn
        try:
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(backend.channel)))
            if backend.table:
                backend.ensure_journal(conn)
                if self.position is None:  # "from now"
                    row = conn.execute(
                        sql.SQL("SELECT COALESCE(MAX(id), 0) FROM {} WHERE channel = %s").format(
                            backend.table_ident
                        ),
                        (backend.channel,),
                    ).fetchone()
                    self.position = str(row[0] if row else 0)
                self.catch_up(conn)
            self.connected()
            idle_since = time.monotonic()
            while not self.stopping.is_set():
                notes = list(conn.notifies(timeout=0.5, stop_after=1))
                if not notes:
                    if backend.table and time.monotonic() - idle_since > _IDLE_RECHECK:
                        self.catch_up(conn)  # a cheap safety net; normally finds nothing
                        idle_since = time.monotonic()
                    continue
                while len(notes) < 1000:
                    more = list(conn.notifies(timeout=0, stop_after=1000))
                    if not more:
                        break
                    notes.extend(more)
                idle_since = time.monotonic()
                self.hand_over(self.decode_notes(conn, [n.payload for n in notes]))
        finally:
            conn.close()

    def _last_id(self) -> int:
        return 0 if self.position in (None, BEGINNING) else int(self.position or 0)

    def catch_up(self, conn: psycopg.Connection[Any]) -> None:
        query = sql.SQL(
            "SELECT id, payload::text FROM {} WHERE channel = %s AND id > %s ORDER BY id LIMIT %s"
        ).format(self.backend.table_ident)
        while not self.stopping.is_set():
            rows = conn.execute(query, (self.backend.channel, self._last_id(), _CATCH_UP_BATCH))
            batch = [_delivery(json.loads(text), str(jid)) for jid, text in rows.fetchall()]
            if not batch:
                return
            self.hand_over(batch)

    def decode_notes(self, conn: psycopg.Connection[Any], payloads: list[str]) -> list[Delivery]:
        batch: list[Delivery] = []
        last = self._last_id()
        for payload in payloads:
            if payload.startswith(_CHUNK_MARK):
                joined = self._join_chunk(payload)
                if joined is not None:
                    batch.append(self._parse(joined, None))
                continue
            if not self.backend.table:
                batch.append(self._parse(payload, None))
                continue
            try:
                data = json.loads(payload)
                jid = int(data["journal_id"])
            except (ValueError, KeyError, TypeError):
                # not one of ours (someone NOTIFYing on the channel by hand): report and skip
                batch.append(Delivery(None, None, "notification without journal_id", payload[:200]))
                continue
            if jid <= last:
                continue  # already delivered by the catch-up
            if data.get("truncated"):
                row = conn.execute(
                    sql.SQL("SELECT payload::text FROM {} WHERE id = %s").format(
                        self.backend.table_ident
                    ),
                    (jid,),
                ).fetchone()
                data = json.loads(row[0]) if row else {}
            batch.append(_delivery(data, str(jid)))
            last = jid
        return batch

    @staticmethod
    def _parse(raw: str, position: str | None) -> Delivery:
        try:
            return _delivery(json.loads(raw), position)
        except ValueError as exc:
            return Delivery(None, position, f"not JSON: {exc}", raw[:200])

    def _join_chunk(self, payload: str) -> str | None:
        header, _, piece = payload[len(_CHUNK_MARK) :].partition("|")
        try:
            event_id, index, count = header.split(":")
            i, n = int(index), int(count)
        except ValueError:
            return None
        if not 0 <= i < n <= 10_000:
            return None  # not one of ours
        if event_id not in self._chunks and len(self._chunks) >= 1000:
            self._chunks.pop(next(iter(self._chunks)))  # a sender that died mid-event
        parts = self._chunks.setdefault(event_id, [""] * n)
        parts[i] = piece
        if i == n - 1:
            del self._chunks[event_id]
            return "".join(parts)
        return None


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
        # journal rows older than this are deleted (at most hourly, by publishers): a region
        # away for longer than that cannot catch up from the journal
        self.retention = retention
        # never pruned: the first publish prunes (not 0.0, which is less than an hour before
        # "now" on a machine booted less than an hour ago: time.monotonic() counts from boot)
        self._last_prune = -math.inf
        self.channel = channel
        self.table = table or None
        parts = tuple(self.table.split(".")) if self.table else ()
        self.table_ident = sql.Identifier(*parts) if parts else sql.Identifier("")
        self._schema = parts[0] if len(parts) == 2 else None
        # advisory lock key for this journal: publishers serialise on it until commit. Keyed
        # by the schema-qualified name, so "x" and "public.x" (one table) share one lock.
        qualified = ".".join(parts) if len(parts) == 2 else f"public.{self.table}"
        self._lock_key = zlib.crc32(f"memoria-journal:{qualified}".encode()) & 0x7FFFFFFF
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()
        self._journal_ready = False
        self._subs: list[Subscription] = []

    @property
    def source_id(self) -> str:
        return f"postgres|{mask_url(self.dsn)}|{self.table or '-'}|{self.channel}"

    def ensure_journal(self, conn: psycopg.Connection[Any]) -> None:
        if not self.table or self._journal_ready:
            return
        statements: list[sql.Composed] = []
        if self._schema:
            statements.append(
                sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self._schema))
            )
        statements += [
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} ("
                " id BIGSERIAL PRIMARY KEY,"
                " channel TEXT NOT NULL,"
                " event_id TEXT NOT NULL,"
                " payload JSONB NOT NULL,"
                " created_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            ).format(self.table_ident),
            sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (channel, id)").format(
                sql.Identifier(f"{self.table.split('.')[-1]}_by_channel"), self.table_ident
            ),
        ]
        with conn.transaction():
            # concurrent CREATE ... IF NOT EXISTS can still collide: serialise them
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._lock_key,))
            for statement in statements:
                conn.execute(statement)
        self._journal_ready = True

    def _publisher(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.dsn)
            self.ensure_journal(self._conn)
        return self._conn

    def _chunked(self, events: Sequence[tuple[str, str]]) -> list[str]:
        """Notifications without a journal: each event whole, or in chunks if too large."""
        notes: list[str] = []
        for event_id, raw in events:
            if len(raw.encode()) <= NOTIFY_LIMIT:
                notes.append(raw)
                continue
            pieces = _split_utf8(raw, NOTIFY_LIMIT - 100)
            notes += [
                f"{_CHUNK_MARK}{event_id}:{n}:{len(pieces)}|{piece}"
                for n, piece in enumerate(pieces)
            ]
        return notes

    def publish_encoded(self, events: Sequence[tuple[str, str]]) -> None:
        if not events:
            return
        with self._lock:
            try:
                conn = self._publisher()
                with conn.transaction():
                    if self.table:
                        conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._lock_key,))
                        # one round trip: append the batch to the journal and NOTIFY each row
                        # with its journal id spliced in, built server-side so the events
                        # cross the wire once; rows too large for NOTIFY go as pointers
                        conn.execute(
                            self._publish_sql,
                            (
                                self.channel,
                                [event_id for event_id, _ in events],
                                [raw for _, raw in events],
                                self.channel,
                                NOTIFY_LIMIT,
                            ),
                        )
                    else:
                        conn.execute(
                            "SELECT count(pg_notify(%s, note)) FROM unnest(%b::text[]) AS note",
                            (self.channel, self._chunked(events)),
                        )
            except psycopg.OperationalError as exc:
                self._drop_connection()
                raise BrokerUnavailable(f"postgres at {mask_url(self.dsn)}: {exc}") from None
            except psycopg.Error as exc:
                # the content itself (say a NUL in JSON text): it would fail on every retry
                raise EventRejected(f"postgres refused the batch: {exc}") from None
            self._maybe_prune()

    def _maybe_prune(self) -> None:
        if not self.table or time.monotonic() - self._last_prune < 3600:
            return
        self._last_prune = time.monotonic()
        try:
            assert self._conn is not None
            deleted = self._conn.execute(
                sql.SQL("DELETE FROM {} WHERE channel = %s AND created_at < now() - %s").format(
                    self.table_ident
                ),
                (self.channel, self.retention),
            ).rowcount
            if deleted:
                log.info(
                    "postgres journal %s: pruned %d events older than %s",
                    self.table,
                    deleted,
                    self.retention,
                )
        except psycopg.Error as exc:
            log.warning("postgres journal %s: pruning failed: %s", self.table, exc)

    @property
    def _publish_sql(self) -> sql.Composed:
        # %b: arrays are sent in binary, which spares psycopg escaping every JSON quote
        return sql.SQL(
            "WITH ins AS ("
            " INSERT INTO {table} (channel, event_id, payload)"
            " SELECT %s, e, p::jsonb FROM unnest(%b::text[], %b::text[]) WITH ORDINALITY"
            " AS x(e, p, o) ORDER BY o"
            " RETURNING id, event_id, payload)"
            " SELECT count(pg_notify(%s, CASE WHEN octet_length(note) <= %s THEN note ELSE"
            " json_build_object('journal_id', id, 'event_id', event_id, 'truncated', true)::text"
            " END)) FROM ("
            "  SELECT id, event_id,"
            "  '{{\"journal_id\":' || id || ',' || substr(payload::text, 2) AS note"
            "  FROM ins ORDER BY id) AS notes"
        ).format(table=self.table_ident)

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
