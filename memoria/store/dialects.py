"""How the store reaches SQLite and PostgreSQL: connections, transactions and the few places
where their SQL differs.

SQL is written once with ``?`` placeholders; the PostgreSQL transaction rewrites them to ``%s``.
Row locks and the auto-increment column are spelled by the transaction (``tx.for_update``,
``tx.autoincrement``), empty where SQLite has no such thing. Table names are constants, never
user input.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Protocol

from ..errors import StoreError, StoreUnavailable
from ..settings import mask_url


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...


class Tx(ABC):
    """One open transaction; ``execute`` takes ``?`` placeholders."""

    autoincrement: str
    for_update: str = ""
    for_share: str = ""

    @abstractmethod
    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor: ...

    @abstractmethod
    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...


class Database(ABC):
    url_for_humans: str

    @abstractmethod
    def transaction(self, *, write: bool) -> AbstractContextManager[Tx]: ...

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def ping(self) -> None: ...


# -- SQLite ----------------------------------------------------------------------------------


class SqliteTx(Tx):
    # a rowid alias, not AUTOINCREMENT: ids stay increasing while rows exist, which is all the
    # outbox needs, and it saves a write to sqlite_sequence on every insert
    autoincrement = "INTEGER PRIMARY KEY"

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        return self.conn.execute(sql, params)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self.conn.executemany(sql, rows)


class Sqlite(Database):
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
    def transaction(self, *, write: bool) -> Iterator[Tx]:
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
                yield SqliteTx(conn)
            except BaseException:  # whatever ends the block early, nothing of it is kept
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


class PgTx(Tx):
    autoincrement = "BIGSERIAL PRIMARY KEY"
    for_update = " FOR UPDATE"
    for_share = " FOR SHARE"

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    @staticmethod
    def _sql(sql: str) -> str:
        return sql.replace("?", "%s")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        cur: Cursor = self.conn.execute(self._sql(sql), params)
        return cur

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with self.conn.cursor() as cur:
            cur.executemany(self._sql(sql), rows)


class Postgres(Database):
    def __init__(self, url: str, max_connections: int = 10) -> None:
        from psycopg_pool import ConnectionPool, PoolTimeout

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
        except PoolTimeout as exc:
            # the pool's workers retry every failed connection (unreachable server, bad URL,
            # refused login) until the wait runs out, so this is how any of them ends
            self.pool.close()
            raise StoreError(
                f"cannot connect to the store at {self.url_for_humans}: {exc}"
            ) from None

    @contextmanager
    def transaction(self, *, write: bool) -> Iterator[Tx]:
        from psycopg import OperationalError
        from psycopg_pool import PoolTimeout

        try:
            with self.pool.connection() as conn, conn.transaction():
                yield PgTx(conn)
        except (OperationalError, PoolTimeout) as exc:
            # lost connection, server shutting down, statement timeout: worth a retry
            raise StoreUnavailable(f"{self.url_for_humans}: {exc}") from None

    def ping(self) -> None:
        with self.pool.connection(timeout=2) as conn:
            conn.execute("SELECT 1")

    def close(self) -> None:
        self.pool.close()


def open_database(url: str) -> Database:
    if url.startswith("sqlite:///"):
        return Sqlite(url.removeprefix("sqlite:///"))
    if url.startswith(("postgresql://", "postgres://")):
        return Postgres(url)
    raise StoreError(f"unsupported store URL {mask_url(url)!r}: use sqlite:/// or postgresql://")
