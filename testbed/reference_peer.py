"""A reference Memoria region, as far as sync goes, written from its documented rules
(``shared/reference/syncevent-wire.md``), not from our code.

* :class:`ReferenceReceiver` applies events the way the reference receiver does, into dicts.
  Where the document leaves room, it takes the reading that is hardest on a sender: every
  action other than ``memory.deleted`` upserts (the document says "otherwise"), and it has no
  deduplication, so an event applied twice is visible in :attr:`applied`.
* :func:`capture` returns a message captured from the reference implementation, verbatim
  (copies of ``shared/reference/upstream-wire/``, the guide's test vectors, live next to this file).
* :class:`RedisReferencePeer` and :class:`PostgresReferencePeer` put captures on the wire the way
  the reference publisher does (plain PUBLISH; INSERT of the payload, then NOTIFY with the whole
  event) and listen the way its subscribers do (SUBSCRIBE; LISTEN), with no replay.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import redis
from psycopg import sql

CAPTURES = Path(__file__).parent / "upstream-wire"
MEMORY_ACTIONS = ("memory.created", "memory.updated", "memory.deleted")


def capture(name: str) -> str:
    """The captured message ``name`` (e.g. ``memory.created``), byte for byte."""
    return (CAPTURES / f"{name}.json").read_text()


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


class ReferenceReceiver:
    def __init__(
        self,
        *,
        namespace: str = "default",
        origin: str = "reference-b",
        floor: float = -15,
        ceiling: float = 15,
        realtime_replication: bool = True,
    ) -> None:
        self.namespace, self.origin = namespace, origin
        self.floor, self.ceiling = floor, ceiling
        self.realtime_replication = realtime_replication
        self.rows: dict[str, dict[str, Any]] = {}  # the replicated table: memory_id -> record
        self.cache: dict[str, dict[str, Any]] = {}  # snapshots: memory_id -> snapshot
        self.applied: list[tuple[str, str]] = []  # (action, memory_id) per event applied
        self.ignored = 0
        self.lock = threading.Lock()

    def receive(self, raw: str | bytes) -> None:
        try:
            data = json.loads(raw)
        except ValueError:
            self.ignored += 1  # a listener that cannot parse a message logs and moves on
            return
        with self.lock:
            self._apply(data)

    def _apply(self, data: Any) -> None:
        if not isinstance(data, dict) or data.get("namespace") != self.namespace:
            self.ignored += 1
            return
        if data.get("origin") is not None and data.get("origin") == self.origin:
            self.ignored += 1
            return
        payload = data.get("payload")
        payload = payload if isinstance(payload, dict) else {}
        snapshot: dict[str, Any]
        replica: dict[str, Any]
        if any(k in payload for k in ("snapshot", "replica", "changes", "privacy")):
            raw_snapshot, raw_replica = payload.get("snapshot"), payload.get("replica")
            snapshot = raw_snapshot if isinstance(raw_snapshot, dict) else {}
            replica = raw_replica if isinstance(raw_replica, dict) else {}
        else:
            snapshot, replica = payload, {}
        record = replica.get("record") if isinstance(replica.get("record"), dict) else None
        privacy = _first(
            payload.get("privacy"), snapshot.get("y_coord"), (record or {}).get("y_coord")
        )
        if privacy is not None and not self.floor <= float(privacy) <= self.ceiling:
            self.ignored += 1
            return
        memory_id = _first(
            payload.get("memory_id"), snapshot.get("memory_id"), data.get("entity_id")
        )
        if data.get("action") == "memory.deleted":
            if memory_id is not None:
                self.rows.pop(memory_id, None)
                self.cache.pop(memory_id, None)
                self.applied.append(("memory.deleted", memory_id))
            return
        if self.realtime_replication and record is not None and record.get("memory_id"):
            self.rows[record["memory_id"]] = record
        if snapshot and memory_id is not None:
            self.cache[memory_id] = snapshot
        if record is not None or (snapshot and memory_id is not None):
            self.applied.append((str(data.get("action")), str(memory_id)))

    def text(self, memory_id: str) -> str | None:
        """The text of a replicated row, where the reference keeps it."""
        row = self.rows.get(memory_id)
        return None if row is None else row.get("processed_data", {}).get("text")


class _Listener:
    """A peer's one listener thread, as the reference runs it: started once, stopped on close."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _spawn(self, run: Callable[[], None]) -> None:
        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def _join(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)


class RedisReferencePeer(_Listener):
    """The reference Redis backend: PUBLISH and SUBSCRIBE on the channel, nothing else."""

    def __init__(self, url: str, channel: str, receiver: ReferenceReceiver | None = None) -> None:
        self.client = redis.Redis.from_url(url, decode_responses=True)
        self.channel = channel
        self.receiver = receiver
        super().__init__()

    def publish(self, raw: str) -> None:
        self.client.publish(self.channel, raw)

    def listen(self) -> None:
        assert self.receiver is not None
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        pubsub.subscribe(self.channel)
        receiver = self.receiver

        def run() -> None:
            try:
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=0.1)
                    if message and message["type"] == "message":
                        receiver.receive(message["data"])
            except redis.ConnectionError:
                return  # the reference's listener ends with its connection: no reconnect
            finally:
                pubsub.close()

        self._spawn(run)

    def close(self) -> None:
        self._join()
        self.client.close()


class PostgresReferencePeer(_Listener):
    """The reference PostgreSQL backend: on one autocommit connection, ``INSERT INTO <table>
    (payload)`` when a table is set, then ``NOTIFY <channel>, <json>``; LISTEN to receive."""

    def __init__(
        self,
        dsn: str,
        channel: str = "memoria_sync",
        table: str | None = None,
        receiver: ReferenceReceiver | None = None,
    ) -> None:
        self.dsn, self.channel, self.table, self.receiver = dsn, channel, table, receiver
        self.conn = psycopg.connect(dsn, autocommit=True)
        super().__init__()

    def create_table(self) -> None:
        """The table as the reference creates it when missing."""
        assert self.table is not None
        self.conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (id BIGSERIAL PRIMARY KEY, created_at TIMESTAMPTZ "
                "NOT NULL DEFAULT NOW(), payload JSONB NOT NULL)"
            ).format(sql.Identifier(*self.table.split(".")))
        )

    def publish(self, raw: str) -> None:
        if self.table is not None:
            self.conn.execute(
                sql.SQL("INSERT INTO {} (payload) VALUES (%s)").format(
                    sql.Identifier(*self.table.split("."))
                ),
                (raw,),
            )
        # what psycopg2's client-side quoting sends: NOTIFY channel, '<json>'
        self.conn.execute(
            sql.SQL("NOTIFY {}, {}").format(sql.Identifier(self.channel), sql.Literal(raw))
        )

    def listen(self) -> None:
        assert self.receiver is not None
        listener = psycopg.connect(self.dsn, autocommit=True)
        listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
        receiver = self.receiver

        def run() -> None:
            try:
                while not self._stop.is_set():
                    for note in listener.notifies(timeout=0.1):
                        receiver.receive(note.payload)
            except psycopg.OperationalError:
                return  # the reference's listener ends with its connection: no reconnect
            finally:
                listener.close()

        self._spawn(run)

    def close(self) -> None:
        self._join()
        self.conn.close()
