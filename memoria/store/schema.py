"""The store's tables: created when missing, brought up to date when an older store lacks a
column, and seeded with the decrement's ``service_metadata`` keys."""

from __future__ import annotations

from ..errors import StoreError
from .decrement import DECREMENT_KEYS
from .dialects import Database, PgTx, Tx


def _statements(tx: Tx) -> list[str]:
    return [
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
            seq {tx.autoincrement},
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
        # peers' decrements kept until this region's Lease allows their token (groups across
        # clusters): durable, because the broker's cursor moves past them
        """CREATE TABLE IF NOT EXISTS sync_deferred (
            event_id TEXT PRIMARY KEY, body TEXT NOT NULL, received_at TEXT NOT NULL)""",
        """CREATE TABLE IF NOT EXISTS sync_cursors (
            source TEXT PRIMARY KEY, position TEXT NOT NULL, updated_at TEXT NOT NULL)""",
    ]


def prepare(db: Database) -> None:
    """Make ``db`` ready for the store, whatever state an earlier version left it in."""
    try:
        with db.transaction(write=True) as tx:
            if isinstance(tx, PgTx):
                # two regions sharing one PostgreSQL store may start at the same moment
                tx.execute("SELECT pg_advisory_xact_lock(7210402)")
            for sql in _statements(tx):
                tx.execute(sql)
            _migrate(tx)
            for key in DECREMENT_KEYS:
                tx.execute(
                    "INSERT INTO service_metadata (key, value) VALUES (?, ?) "
                    "ON CONFLICT (key) DO NOTHING",
                    (key, "0" if key.endswith("token") else ""),
                )
    except StoreError:
        raise
    except Exception as exc:
        # any driver's error (a read-only file, missing privileges, a locked database): the
        # store cannot start, and the message must say which store
        raise StoreError(f"cannot prepare the store at {db.url_for_humans}: {exc}") from exc


def _migrate(tx: Tx) -> None:
    """Columns added after a store may have been created (CREATE TABLE IF NOT EXISTS
    leaves an existing table as it was)."""
    if isinstance(tx, PgTx):
        tx.execute("ALTER TABLE memories ADD COLUMN IF NOT EXISTS x_as_of TEXT NOT NULL DEFAULT ''")
        return
    columns = {row[1] for row in tx.execute("PRAGMA table_info(memories)").fetchall()}
    if "x_as_of" not in columns:
        tx.execute("ALTER TABLE memories ADD COLUMN x_as_of TEXT NOT NULL DEFAULT ''")
