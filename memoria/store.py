"""The memory store: embedded SQLite by default, PostgreSQL by URL.

Besides memories it keeps what makes sync lose nothing and apply once:

* ``sync_outbox``: events written in the same transaction as the memory they describe, relayed
  to the broker later (a transactional outbox), tagged with the region that wrote them;
* ``sync_inbox``: ids of inbound events already applied, so a re-delivery changes nothing;
* ``sync_cursors``: per source, the journal position applied last, committed with the events;
* ``service_metadata``: ``last_decrement_date`` and who ran it, claimed by compare-and-set with a
  fencing token so one date is decremented once even by two processes that both think they lead.

SQL is written once with ``?`` placeholders; the PostgreSQL dialect rewrites them to ``%s``.
Table names are constants, never user input.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import datetime as dt
import logging
import sqlite3
import threading
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .errors import MemoryNotFound, StoreError, StoreUnavailable
from .settings import mask_url
from .sync.events import Action, EntityType, SyncEvent

log = logging.getLogger(__name__)

DECREMENT_KEYS = (
    "last_decrement_date",
    "last_decrement_by",
    "last_decrement_at",
    "last_decrement_token",
    "fencing_token",
)


def utcnow() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True, slots=True)
class Memory:
    id: str
    namespace: str
    text: str
    x_coord: float
    y_coord: float
    z_coord: float
    created_at: str
    updated_at: str
    version: int
    origin: str
    # the last decrement date that x_coord already reflects; lets a peer whose store has seen
    # more (or fewer) decrements adjust x_coord instead of undoing or repeating one
    x_as_of: str = ""

    def to_payload(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "namespace": self.namespace,
            "text": self.text,
            "x_coord": self.x_coord,
            "y_coord": self.y_coord,
            "z_coord": self.z_coord,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "version": self.version,
            "origin": self.origin,
            "x_as_of": self.x_as_of,
        }


@dataclass(frozen=True, slots=True)
class OutboxRow:
    seq: int
    event_id: str
    body: str  # the encoded SyncEvent
    y_coord: float | None  # privacy of the content it carries, if any


@dataclass(frozen=True, slots=True)
class DecrementOutcome:
    """What a decrement attempt did: ``ran`` or why not (``already``, ``stale``)."""

    date: str
    ran: bool
    reason: str
    rows: int = 0
    last_by: str | None = None


@dataclass(slots=True)
class InboundOp:
    """One inbound event prepared by the sync coordinator for :meth:`MemoryStore.apply_inbound`.

    ``kind``: ``upsert`` (store the payload's memory), ``withdraw`` (drop our copy: the memory
    left our privacy range or was deleted at its origin), ``decrement`` (apply the leader's
    decrement once per date) or ``skip`` (only remember the id: own origin, privacy, malformed).
    """

    event_id: str
    kind: str
    event: SyncEvent | None = None
    memory: Memory | None = None


@dataclass(frozen=True, slots=True)
class InboundResult:
    applied: int = 0
    duplicates: int = 0
    skipped: int = 0
    stale: int = 0
    outcomes: list[DecrementOutcome] = field(default_factory=list)


class _Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...


class _Tx(ABC):
    """One open transaction; ``execute`` takes ``?`` placeholders."""

    @abstractmethod
    def execute(self, sql: str, params: Sequence[Any] = ()) -> _Cursor: ...

    @abstractmethod
    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...


class _Database(ABC):
    url_for_humans: str
    for_update: str = ""
    for_share: str = ""
    autoincrement: str

    @abstractmethod
    def transaction(self, *, write: bool) -> Any: ...

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def ping(self) -> None: ...


# -- SQLite ----------------------------------------------------------------------------------


class _SqliteTx(_Tx):
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> _Cursor:
        return self.conn.execute(sql, params)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self.conn.executemany(sql, rows)


class _Sqlite(_Database):
    # a rowid alias, not AUTOINCREMENT: ids stay increasing while rows exist, which is all the
    # outbox needs, and it saves a write to sqlite_sequence on every insert
    autoincrement = "INTEGER PRIMARY KEY"

    def __init__(self, path: str) -> None:
        self.path = path
        self.url_for_humans = f"sqlite:///{path}"
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._writer = threading.Lock()

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            # one connection per thread; autocommit mode so transactions are ours to begin
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=10000")
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    @contextmanager
    def transaction(self, *, write: bool) -> Iterator[_Tx]:
        conn = self._conn()
        # Writers of this process queue on a lock instead of in SQLite's busy handler, whose
        # sleeps (up to 100 ms each) make the latency tail under concurrent requests.
        # IMMEDIATE then takes the file's write lock up front (other processes), so a read
        # lock never has to be upgraded mid-transaction.
        with self._writer if write else contextlib.nullcontext():
            try:
                conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            except sqlite3.OperationalError as exc:
                raise StoreUnavailable(f"{self.url_for_humans}: {exc}") from None
            try:
                yield _SqliteTx(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            else:
                conn.execute("COMMIT")

    def ping(self) -> None:
        self._conn().execute("SELECT 1").fetchone()

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                with contextlib.suppress(sqlite3.ProgrammingError):
                    conn.close()
            self._all.clear()
        self._local = threading.local()


# -- PostgreSQL ------------------------------------------------------------------------------


class _PgTx(_Tx):
    def __init__(self, conn: Any) -> None:
        self.conn = conn

    @staticmethod
    def _sql(sql: str) -> str:
        return sql.replace("?", "%s")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> _Cursor:
        cur: _Cursor = self.conn.execute(self._sql(sql), params)
        return cur

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with self.conn.cursor() as cur:
            cur.executemany(self._sql(sql), rows)


class _Postgres(_Database):
    autoincrement = "BIGSERIAL PRIMARY KEY"
    for_update = " FOR UPDATE"
    for_share = " FOR SHARE"

    def __init__(self, url: str, max_connections: int = 10) -> None:
        from psycopg_pool import ConnectionPool

        self.url_for_humans = mask_url(url)
        self.pool = ConnectionPool(
            url,
            min_size=1,
            max_size=max_connections,
            open=False,
            name="memoria-store",
            kwargs={"autocommit": False},
        )
        try:
            self.pool.open(wait=True, timeout=15)
        except Exception as exc:
            self.pool.close()
            raise StoreError(
                f"cannot connect to the store at {self.url_for_humans}: {exc}"
            ) from None

    @contextmanager
    def transaction(self, *, write: bool) -> Iterator[_Tx]:
        from psycopg import OperationalError
        from psycopg_pool import PoolTimeout

        try:
            with self.pool.connection() as conn, conn.transaction():
                yield _PgTx(conn)
        except (OperationalError, PoolTimeout) as exc:
            # lost connection, server shutting down, statement timeout: worth a retry
            raise StoreUnavailable(f"{self.url_for_humans}: {exc}") from None

    def ping(self) -> None:
        with self.pool.connection(timeout=2) as conn:
            conn.execute("SELECT 1")

    def close(self) -> None:
        self.pool.close()


def open_database(url: str) -> _Database:
    if url.startswith("sqlite:///"):
        return _Sqlite(url.removeprefix("sqlite:///"))
    if url.startswith(("postgresql://", "postgres://")):
        return _Postgres(url)
    raise StoreError(f"unsupported store URL {mask_url(url)!r}: use sqlite:/// or postgresql://")


_MEMORY_COLUMNS = (
    "id, namespace, text, x_coord, y_coord, z_coord, created_at, updated_at, version, origin, "
    "x_as_of"
)
_MEMORY_MARKS = ", ".join("?" * 11)


def _memory(row: Sequence[Any]) -> Memory:
    return Memory(
        id=row[0],
        namespace=row[1],
        text=row[2],
        x_coord=float(row[3]),
        y_coord=float(row[4]),
        z_coord=float(row[5]),
        created_at=row[6],
        updated_at=row[7],
        version=int(row[8]),
        origin=row[9],
        x_as_of=row[10],
    )


EventFactory = Callable[[Memory], SyncEvent | None]

#: x_as_of of a peer's memory whose event did not carry one
UNKNOWN_AS_OF = "?"


class MemoryStore:
    """Memories plus the sync bookkeeping tables, in SQLite or PostgreSQL."""

    def __init__(self, url: str) -> None:
        self.db = open_database(url)
        self.url_for_humans = self.db.url_for_humans
        self._init_schema()

    # -- schema ------------------------------------------------------------------------------

    def _init_schema(self) -> None:
        statements = [
            """CREATE TABLE IF NOT EXISTS memories (
                id TEXT PRIMARY KEY,
                namespace TEXT NOT NULL,
                text TEXT NOT NULL,
                x_coord DOUBLE PRECISION NOT NULL DEFAULT 0,
                y_coord DOUBLE PRECISION NOT NULL DEFAULT 0,
                z_coord DOUBLE PRECISION NOT NULL DEFAULT 0,
                created_at TEXT NOT NULL,
                updated_at TEXT NOT NULL,
                version BIGINT NOT NULL DEFAULT 1,
                origin TEXT NOT NULL,
                x_as_of TEXT NOT NULL DEFAULT '',
                deleted BOOLEAN NOT NULL DEFAULT FALSE)""",
            """CREATE TABLE IF NOT EXISTS decrement_log (
                date TEXT PRIMARY KEY, ran_by TEXT NOT NULL, ran_at TEXT NOT NULL)""",
            "CREATE INDEX IF NOT EXISTS memories_by_namespace ON memories (namespace, created_at)",
            """CREATE TABLE IF NOT EXISTS service_metadata (
                key TEXT PRIMARY KEY, value TEXT NOT NULL)""",
            f"""CREATE TABLE IF NOT EXISTS sync_outbox (
                seq {self.db.autoincrement},
                origin TEXT NOT NULL,
                event_id TEXT NOT NULL,
                body TEXT NOT NULL,
                -- privacy of the memory the event carries (NULL: no content, e.g. a deletion),
                -- so the relay can re-check the range without decoding the body
                y_coord DOUBLE PRECISION,
                created_at TEXT NOT NULL)""",
            "CREATE INDEX IF NOT EXISTS sync_outbox_by_origin ON sync_outbox (origin, seq)",
            """CREATE TABLE IF NOT EXISTS sync_inbox (
                event_id TEXT PRIMARY KEY, received_at TEXT NOT NULL)""",
            "CREATE INDEX IF NOT EXISTS sync_inbox_by_time ON sync_inbox (received_at)",
            """CREATE TABLE IF NOT EXISTS sync_cursors (
                source TEXT PRIMARY KEY, position TEXT NOT NULL, updated_at TEXT NOT NULL)""",
        ]
        try:
            with self.db.transaction(write=True) as tx:
                if isinstance(tx, _PgTx):
                    # two regions sharing one PostgreSQL store may start at the same moment
                    tx.execute("SELECT pg_advisory_xact_lock(7210402)")
                for sql in statements:
                    tx.execute(sql)
                self._migrate(tx)
                for key in DECREMENT_KEYS:
                    tx.execute(
                        "INSERT INTO service_metadata (key, value) VALUES (?, ?) "
                        "ON CONFLICT (key) DO NOTHING",
                        (key, "0" if key.endswith("token") else ""),
                    )
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"cannot prepare the store at {self.url_for_humans}: {exc}") from exc

    @staticmethod
    def _migrate(tx: _Tx) -> None:
        """Columns added after a store may have been created (CREATE TABLE IF NOT EXISTS
        leaves an existing table as it was)."""
        if isinstance(tx, _PgTx):
            tx.execute(
                "ALTER TABLE memories ADD COLUMN IF NOT EXISTS x_as_of TEXT NOT NULL DEFAULT ''"
            )
            return
        columns = {row[1] for row in tx.execute("PRAGMA table_info(memories)").fetchall()}
        if "x_as_of" not in columns:
            tx.execute("ALTER TABLE memories ADD COLUMN x_as_of TEXT NOT NULL DEFAULT ''")

    def close(self) -> None:
        self.db.close()

    def ping(self) -> None:
        self.db.ping()

    # -- local writes ------------------------------------------------------------------------

    @staticmethod
    def _enqueue(tx: _Tx, event: SyncEvent | None) -> None:
        if event is None:
            return
        y = event.payload.get("y_coord") if event.entity_type is EntityType.MEMORY else None
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
        memory = Memory(
            id=memory_id or uuid.uuid4().hex,
            namespace=namespace,
            text=text,
            x_coord=x_coord,
            y_coord=y_coord,
            z_coord=z_coord,
            created_at=now,
            updated_at=now,
            version=1,
            origin=origin,
        )
        with self.db.transaction(write=True) as tx:
            memory = dataclasses.replace(memory, x_as_of=self._last_date(tx))
            tx.execute(
                f"INSERT INTO memories ({_MEMORY_COLUMNS}) VALUES ({_MEMORY_MARKS})",
                (
                    memory.id,
                    namespace,
                    text,
                    x_coord,
                    y_coord,
                    z_coord,
                    now,
                    now,
                    1,
                    origin,
                    memory.x_as_of,
                ),
            )
            self._enqueue(tx, make_event(memory))
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
            before = self._get(tx, memory_id, lock=True)
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
                version=before.version + 1,
                origin=origin,
                # a new x_coord from the caller is as of today's state of the store
                x_as_of=self._last_date(tx) if "x_coord" in changes else before.x_as_of,
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
            self._enqueue(tx, make_event(before, after))
        return after

    def delete_memory(self, memory_id: str, *, origin: str, make_event: EventFactory) -> Memory:
        """Delete locally, keeping a tombstone (id and version) so late updates stay deleted."""
        with self.db.transaction(write=True) as tx:
            before = self._get(tx, memory_id, lock=True)
            if before is None:
                raise MemoryNotFound(memory_id)
            version = before.version + 1
            tx.execute(
                "UPDATE memories SET deleted = TRUE, text = '', version = ?, origin = ?, "
                "updated_at = ? WHERE id = ?",
                (version, origin, utcnow(), memory_id),
            )
            self._enqueue(tx, make_event(before))
        return before

    # -- reads -------------------------------------------------------------------------------

    def _get(self, tx: _Tx, memory_id: str, *, lock: bool = False) -> Memory | None:
        row = tx.execute(
            f"SELECT {_MEMORY_COLUMNS} FROM memories WHERE id = ? AND NOT deleted"
            + (self.db.for_update if lock else ""),
            (memory_id,),
        ).fetchone()
        return _memory(row) if row else None

    def get_memory(self, memory_id: str) -> Memory:
        with self.db.transaction(write=False) as tx:
            found = self._get(tx, memory_id)
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
                f"SELECT {_MEMORY_COLUMNS} FROM memories WHERE {where} "
                "ORDER BY created_at, id LIMIT ? OFFSET ?",
                (*params, limit, offset),
            ).fetchall()
        return [_memory(r) for r in rows]

    def count_memories(self) -> int:
        with self.db.transaction(write=False) as tx:
            row = tx.execute("SELECT COUNT(*) FROM memories WHERE NOT deleted").fetchone()
        return int(row[0])

    def metadata(self) -> dict[str, str]:
        with self.db.transaction(write=False) as tx:
            rows = tx.execute("SELECT key, value FROM service_metadata").fetchall()
        return {k: v for k, v in rows}

    # -- outbox ------------------------------------------------------------------------------

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

    # -- inbound -----------------------------------------------------------------------------

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
        applied = duplicates = skipped = stale = 0
        outcomes: list[DecrementOutcome] = []
        now = utcnow()
        with self.db.transaction(write=True) as tx:
            dates: list[str] | None = None  # this store's decrement log, read when first needed
            for op in ops:
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
                        dates = self._decrement_dates(tx)
                    self._upsert_remote(tx, _rebase(op.memory, dates), deleted=False)
                    applied += 1
                elif op.kind == "withdraw" and op.event is not None:
                    self._withdraw(tx, op.event)
                    applied += 1
                elif op.kind == "decrement" and op.event is not None:
                    outcome = self._remote_decrement(tx, op.event)
                    outcomes.append(outcome)
                    if outcome.ran:
                        applied += 1
                        if dates is not None:
                            bisect.insort(dates, outcome.date)
                    elif outcome.reason == "stale":
                        stale += 1
                    else:
                        skipped += 1
                else:
                    skipped += 1
            if position is not None:
                tx.execute(
                    "INSERT INTO sync_cursors (source, position, updated_at) VALUES (?, ?, ?) "
                    "ON CONFLICT (source) DO UPDATE SET position = excluded.position, "
                    "updated_at = excluded.updated_at",
                    (source, position, now),
                )
        return InboundResult(applied, duplicates, skipped, stale, outcomes)

    @staticmethod
    def _upsert_remote(tx: _Tx, m: Memory, *, deleted: bool) -> None:
        tx.execute(
            f"INSERT INTO memories ({_MEMORY_COLUMNS}, deleted) "
            f"VALUES ({_MEMORY_MARKS}, ?) "
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

    @staticmethod
    def _withdraw(tx: _Tx, event: SyncEvent) -> None:
        """Drop our copy (content and all) if we have one; never create a row for it.

        Used for deletes at the origin and for updates that left our privacy range: the newer
        version wins, so a late, older update cannot bring the content back.
        """
        version = event.payload.get("version")
        newer_than = int(version) if isinstance(version, int) else 1 << 62
        tx.execute(
            "UPDATE memories SET deleted = TRUE, text = '', version = ?, origin = ?, "
            "updated_at = ? WHERE id = ? AND version <= ?",
            (newer_than, event.origin, utcnow(), event.entity_id, newer_than),
        )

    # -- the daily decrement -----------------------------------------------------------------

    def _claim(
        self, tx: _Tx, date: str, token: int, *, check_token: bool
    ) -> tuple[bool, str, dict[str, str]]:
        rows = tx.execute(
            "SELECT key, value FROM service_metadata WHERE key IN (?, ?, ?, ?, ?)"
            + self.db.for_update,
            DECREMENT_KEYS,
        ).fetchall()
        meta = {k: v for k, v in rows}
        highest = int(meta.get("fencing_token") or 0)
        if check_token and token < highest:
            return False, "stale", meta
        if (meta.get("last_decrement_date") or "") >= date:
            return False, "already", meta
        return True, "ran", meta

    def _last_date(self, tx: _Tx) -> str:
        # FOR SHARE on PostgreSQL: a write waits for a decrement committing right now, so the
        # date it records is the one its row's x_coord really reflects
        row = tx.execute(
            "SELECT value FROM service_metadata WHERE key = 'last_decrement_date'"
            + self.db.for_share
        ).fetchone()
        return str(row[0]) if row else ""

    @staticmethod
    def _decrement_dates(tx: _Tx) -> list[str]:
        return [r[0] for r in tx.execute("SELECT date FROM decrement_log ORDER BY date").fetchall()]

    def _decrement_rows(self, tx: _Tx, date: str, token: int, by: str) -> int:
        # a memory that came from a peer already decremented for this date is left alone
        rows = tx.execute(
            "UPDATE memories SET x_coord = x_coord - 1, x_as_of = ? "
            "WHERE NOT deleted AND x_as_of < ?",
            (date, date),
        ).rowcount
        tx.execute(
            "INSERT INTO decrement_log (date, ran_by, ran_at) VALUES (?, ?, ?) "
            "ON CONFLICT (date) DO NOTHING",
            (date, by, utcnow()),
        )
        meta = tx.execute(
            "SELECT value FROM service_metadata WHERE key = 'fencing_token'"
        ).fetchone()
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

    def run_decrement(
        self, date: str, *, token: int, region: str, make_event: Callable[[str], SyncEvent | None]
    ) -> DecrementOutcome:
        """The leader's fenced decrement for ``date`` (ISO ``YYYY-MM-DD``).

        One transaction: lock the metadata rows, refuse a token lower than the highest one seen
        (a stale leader) and a date not after the last one decremented, then decrement every
        memory, record who ran it, and queue the event for the peers.
        """
        with self.db.transaction(write=True) as tx:
            ok, reason, meta = self._claim(tx, date, token, check_token=True)
            if not ok:
                return DecrementOutcome(date, False, reason, last_by=meta.get("last_decrement_by"))
            rows = self._decrement_rows(tx, date, token, region)
            self._enqueue(tx, make_event(date))
        return DecrementOutcome(date, True, "ran", rows, region)

    def _remote_decrement(self, tx: _Tx, event: SyncEvent) -> DecrementOutcome:
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
        ok, reason, meta = self._claim(tx, date, token, check_token=True)
        if not ok:
            return DecrementOutcome(date, False, reason, last_by=meta.get("last_decrement_by"))
        rows = self._decrement_rows(tx, date, token, event.origin)
        return DecrementOutcome(date, True, "ran", rows, event.origin)

    def raise_fencing_token(self, token: int) -> None:
        """Remember the highest fencing token seen, so older leaders are refused from now on."""
        with self.db.transaction(write=True) as tx:
            row = tx.execute(
                "SELECT value FROM service_metadata WHERE key = 'fencing_token'"
                + self.db.for_update
            ).fetchone()
            if int(row[0] or 0) < token:
                tx.execute(
                    "UPDATE service_metadata SET value = ? WHERE key = 'fencing_token'",
                    (str(token),),
                )

    def prune_inbox(self, older_than: dt.timedelta) -> int:
        cutoff = (dt.datetime.now(dt.UTC) - older_than).isoformat(timespec="microseconds")
        with self.db.transaction(write=True) as tx:
            return int(
                tx.execute("DELETE FROM sync_inbox WHERE received_at < ?", (cutoff,)).rowcount
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


def memory_event(action: Action, memory: Memory, origin: str) -> SyncEvent:
    return SyncEvent(
        action=action,
        entity_type=EntityType.MEMORY,
        namespace=memory.namespace,
        entity_id=memory.id,
        payload=memory.to_payload(),
        origin=origin,
    )
