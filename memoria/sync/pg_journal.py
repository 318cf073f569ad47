"""The PostgreSQL journal table, in the contract's layout, shareable with reference publishers.

Layout::

    id BIGSERIAL PRIMARY KEY, created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(), payload JSONB NOT
    NULL, channel TEXT, event_id TEXT

The first three columns are the reference implementation's; ``channel`` and ``event_id`` are
ours and NULLable, so a reference publisher's ``INSERT INTO t (payload) VALUES (...)`` fits. A
row with no channel (a reference publisher's) belongs to every channel on that table.

Found at start-up and brought to this layout in place, nothing lost: a table of the reference's
layout gets the two columns; a table of this runtime's earlier layout (``channel`` and
``event_id`` NOT NULL, which made every reference INSERT fail) has the constraints dropped. Its
rows, in the earlier dialect, still replay. A table that has no ``id`` or ``payload`` is not a
journal and is refused, never altered. When the columns cannot be added (the table belongs to
another role), events are journaled by payload alone and a warning says so.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import zlib
from typing import Any

import psycopg
from psycopg import errors, sql

from ..errors import BrokerRefused, BrokerUnavailable, EventRejected, SyncError

log = logging.getLogger("memoria.sync")

#: how our NOTIFYs of journaled events begin: the rest is the event, read from the journal
JOURNAL_MARK = '{"journal_id":'
_OURS = ("channel", "event_id")


class Journal:
    def __init__(self, table: str) -> None:
        parts = tuple(table.split("."))
        self.name = table
        self.ident = sql.Identifier(*parts)
        self._schema = parts[0] if len(parts) == 2 else None
        # advisory lock key for this journal: publishers serialise on it until commit, so ids
        # are assigned in commit order. Keyed by the schema-qualified name, so "x" and
        # "public.x" (one table) share one lock.
        qualified = ".".join(parts) if len(parts) == 2 else f"public.{table}"
        self.lock_key = zlib.crc32(f"memoria-journal:{qualified}".encode()) & 0x7FFFFFFF
        self.has_channel = self.has_event_id = True
        self.ready = False

    # -- layout ---------------------------------------------------------------------------------

    def _columns(self, conn: psycopg.Connection[Any]) -> dict[str, bool] | None:
        """{column: NOT NULL} of the table, None if it does not exist."""
        row = conn.execute("SELECT to_regclass(%s)::oid", (self.ident.as_string(conn),)).fetchone()
        if row is None or row[0] is None:
            return None
        rows = conn.execute(
            "SELECT attname, attnotnull FROM pg_attribute "
            "WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped",
            (row[0],),
        ).fetchall()
        return {str(name): bool(notnull) for name, notnull in rows}

    def ensure(self, conn: psycopg.Connection[Any]) -> None:
        """Create the table if missing, migrate an earlier layout, learn its columns."""
        if self.ready:
            return
        columns = self._columns(conn)
        if columns is None:
            self._create(conn)
            columns = self._columns(conn) or {}
        missing = {"id", "payload"} - columns.keys()
        if missing:
            raise BrokerRefused(
                f"table {self.name} is not a sync journal (no {' or '.join(sorted(missing))} "
                "column); set sync.table to a journal table (one that does not exist is "
                "created); events stay queued until then",
                "not_a_journal",
            )
        changes = [
            sql.SQL("ADD COLUMN IF NOT EXISTS {} TEXT").format(sql.Identifier(c))
            if c not in columns
            else sql.SQL("ALTER COLUMN {} DROP NOT NULL").format(sql.Identifier(c))
            for c in _OURS
            if columns.get(c, True)
        ]
        if changes:
            self._migrate(conn, changes)
            columns = self._columns(conn) or {}
        self.has_channel, self.has_event_id = ("channel" in columns), ("event_id" in columns)
        self.ready = True

    def _create(self, conn: psycopg.Connection[Any]) -> None:
        with conn.transaction():
            # concurrent CREATE ... IF NOT EXISTS can still collide: serialise them
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (self.lock_key,))
            if self._schema:
                conn.execute(
                    sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self._schema))
                )
            conn.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} ("
                    " id BIGSERIAL PRIMARY KEY,"
                    " created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),"
                    " payload JSONB NOT NULL,"
                    " channel TEXT,"
                    " event_id TEXT)"
                ).format(self.ident)
            )

    def _migrate(self, conn: psycopg.Connection[Any], changes: list[sql.Composed]) -> None:
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (self.lock_key,))
                conn.execute(
                    sql.SQL("ALTER TABLE {} ").format(self.ident) + sql.SQL(", ").join(changes)
                )
        except (errors.InsufficientPrivilege, errors.ReadOnlySqlTransaction) as exc:
            # not ours to alter (a reference region's table, a read replica): work with it as
            # it is; rows without our columns belong to every channel
            log.warning(
                "postgres journal %s: cannot bring it to the shared layout (%s); "
                "continuing with its columns as they are",
                self.name,
                str(exc).strip(),
            )
            return
        log.info("postgres journal %s: migrated to the shared layout in place", self.name)

    # -- statements -----------------------------------------------------------------------------

    def publish_sql(self) -> sql.Composed:
        """One statement (one round trip, its own transaction): take the journal lock, append
        the batch, NOTIFY each row. A note is the event with its journal id spliced in front;
        one too large for NOTIFY becomes a stub: the envelope, memory id, namespace and privacy
        (params: lock, ids, events, channel, limit)."""
        columns = [sql.Identifier("payload")]
        values = [sql.SQL("p::jsonb")]
        if self.has_channel:
            columns.append(sql.Identifier("channel"))
            values.append(sql.SQL("%(channel)s"))
        if self.has_event_id:
            columns.append(sql.Identifier("event_id"))
            values.append(sql.SQL("e"))
        # %b: arrays are sent in binary, which spares psycopg escaping every JSON quote
        return sql.SQL(
            "WITH lock AS MATERIALIZED (SELECT pg_advisory_xact_lock(%(lock)s)),"
            " ins AS (INSERT INTO {table} ({columns})"
            " SELECT {values} FROM lock, unnest(%(ids)b::text[], %(events)b::text[])"
            " WITH ORDINALITY AS x(e, p, o) ORDER BY o RETURNING id, payload)"
            " SELECT count(pg_notify(%(channel)s, CASE WHEN octet_length(note) < %(limit)s"
            " THEN note ELSE {stub} END)) FROM ("
            "  SELECT id, payload, '{{\"journal_id\":' || id || ',' || substr(payload::text, 2)"
            "  AS note FROM ins ORDER BY id) AS notes"
        ).format(
            table=self.ident,
            columns=sql.SQL(", ").join(columns),
            values=sql.SQL(", ").join(values),
            stub=_STUB,
        )

    def read_sql(self) -> sql.Composed:
        """Rows after a position, in id order, bounded in bytes: id, the event (NULL for
        another channel's row and for one over ``max`` bytes), the row's age in seconds, and
        the event's size in bytes (NULL for another channel's row). Rows stop once those
        before hold ``budget`` bytes, the first always comes (params: max, channel, after,
        limit, budget)."""
        ours = sql.SQL(
            "channel IS NULL OR channel = %(channel)s"
            if self.has_channel
            else "%(channel)s IS NOT NULL"
        )
        return sql.SQL(
            "SELECT id, CASE WHEN mine AND size <= %(max)s THEN body END, age,"
            " CASE WHEN mine THEN size END FROM ("
            "  SELECT id, ({ours}) AS mine, b.body, octet_length(b.body) AS size,"
            "  EXTRACT(EPOCH FROM clock_timestamp() - created_at)::float8 AS age,"
            "  sum(octet_length(b.body)) OVER (ORDER BY id) AS running"
            "  FROM {table} CROSS JOIN LATERAL (SELECT payload::text AS body) AS b"
            "  WHERE id > %(after)s ORDER BY id LIMIT %(limit)s) AS r"
            " WHERE running - size < %(budget)s ORDER BY id"
        ).format(ours=ours, table=self.ident)

    def last_id(self, conn: psycopg.Connection[Any]) -> int:
        row = conn.execute(sql.SQL("SELECT COALESCE(MAX(id), 0) FROM {}").format(self.ident))
        found = row.fetchone()
        return int(found[0]) if found else 0

    def prune(self, conn: psycopg.Connection[Any], channel: str, retention: dt.timedelta) -> int:
        """Delete this channel's rows (and reference rows) older than ``retention``."""
        ours = sql.SQL(
            "(channel IS NULL OR channel = %s)" if self.has_channel else "%s IS NOT NULL"
        )
        return conn.execute(
            sql.SQL("DELETE FROM {} WHERE {} AND created_at < now() - %s").format(self.ident, ours),
            (channel, retention),
        ).rowcount


# a note too large for NOTIFY: what a reference receiver can act on without the content
_STUB = sql.SQL(  # not a format string: braces are literal
    "'{\"journal_id\":' || id || ',\"truncated\":true,' || substr(jsonb_strip_nulls("
    "jsonb_build_object('action', payload->'action', 'entity_type', payload->'entity_type',"
    " 'namespace', payload->'namespace', 'created_at', payload->'created_at',"
    " 'entity_id', payload->'entity_id', 'origin', payload->'origin',"
    " 'event_id', payload->'event_id', 'payload', jsonb_build_object("
    "  'memory_id', payload#>'{payload,memory_id}',"
    "  'namespace', payload#>'{payload,namespace}',"
    "  'privacy', payload#>'{payload,privacy}')))::text, 2)"
)


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def classify(exc: psycopg.Error, where: str) -> SyncError:
    """What a failed publish means for the events.

    * the connection, or a passing condition (lost, shutting down, too many clients, a
      deadlock): BrokerUnavailable, retried;
    * the content (class 22 data exceptions, 54 limits): EventRejected, for that event alone;
    * anything else is the setup (no such table or schema, no privilege, a read-only server,
      bad credentials): BrokerRefused, named in /healthz, kept queued until someone fixes it.
    """
    state = exc.sqlstate or ""
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if not state or state[:2] in ("08", "57", "40") or state == "53300":
        return BrokerUnavailable(f"{where}: {message}")
    if state[:2] in ("22", "54"):
        return EventRejected(f"{where} refuses the event: {message}")
    return BrokerRefused(
        f"{where} refuses the events: {message}; they stay queued until the setting is fixed",
        _snake(type(exc).__name__),
    )
