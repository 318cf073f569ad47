"""The PostgreSQL journal: an earlier layout migrated in place with nothing lost, and a broker
that refuses events for its setup keeps them queued, named in /healthz, until it is fixed."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient

from memoria.api import create_app
from memoria.settings import DatabaseSettings, MemoriaSettings
from testbed import PostgresServer, wait_until
from testbed.inprocess import Broker, Region, sqlite_url, two_regions
from testbed.reference_peer import PostgresReferencePeer, capture

pytestmark = pytest.mark.integration

TABLE = "infra.memoria_sync_events"
REF_ID = "3f6c1a52-8d0e-4f7b-9a61-2b5d7c0e9a14"


@pytest.fixture
def database(postgres_server: PostgresServer) -> str:
    return postgres_server.create_database(f"journal_{uuid.uuid4().hex[:12]}")


def _old_event(i: int) -> dict[str, object]:
    """An event as this runtime wrote them before it spoke the guide's dialect."""
    return {
        "event_id": f"old{i}",
        "action": "create",
        "entity_type": "memory",
        "namespace": "default",
        "entity_id": f"old-memory-{i}",
        "payload": {
            "id": f"old-memory-{i}",
            "namespace": "default",
            "text": f"written before the upgrade {i}",
            "x_coord": 0.0,
            "y_coord": 1.0,
            "z_coord": 0.0,
            "created_at": "2026-11-01T00:00:00+00:00",
            "updated_at": "2026-11-01T00:00:00+00:00",
            "version": 1,
            "origin": "region-a",
            "x_as_of": "",
        },
        "origin": "region-a",
        "created_at": "2026-11-01T00:00:00+00:00",
    }


def test_the_earlier_layout_is_migrated_in_place_and_still_replays(
    database: str, tmp_path: Path
) -> None:
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA infra")
        conn.execute(  # this runtime's earlier layout: channel and event_id NOT NULL
            f"CREATE TABLE {TABLE} (id BIGSERIAL PRIMARY KEY, channel TEXT NOT NULL, "
            "event_id TEXT NOT NULL, payload JSONB NOT NULL, "
            "created_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        for i in range(5):
            conn.execute(
                f"INSERT INTO {TABLE} (channel, event_id, payload) VALUES (%s, %s, %s)",
                ("memoria_sync", f"old{i}", json.dumps(_old_event(i))),
            )
        with pytest.raises(psycopg.errors.NotNullViolation):  # what broke reference publishers
            conn.execute(f"INSERT INTO {TABLE} (payload) VALUES (%s)", (capture("memory.created"),))
    broker = Broker("postgres", database, database, table=TABLE, channel="memoria_sync")
    b = Region("region-b", sqlite_url(tmp_path, "b"), broker.sync(reader=True)).start()
    reference = PostgresReferencePeer(database, "memoria_sync", TABLE)
    try:
        old = {f"old-memory-{i}" for i in range(5)}
        wait_until(lambda: old <= b.ids(), what="the old rows replayed after the upgrade")
        reference.publish(capture("memory.created"))  # a reference INSERT fits now
        wait_until(lambda: REF_ID in b.ids(), what="the reference's event")
        with psycopg.connect(database) as conn:
            rows = conn.execute(f"SELECT event_id, channel FROM {TABLE} ORDER BY id").fetchall()
        assert rows[:5] == [(f"old{i}", "memoria_sync") for i in range(5)]  # nothing lost
        assert rows[5] == (None, None)  # the reference's row: payload only
        assert b.count("memoria_sync_events_applied_total") == 6
    finally:
        b.stop()
        reference.close()


def _serve(tmp_path: Path, database: str, table: str) -> TestClient:
    settings = MemoriaSettings(
        region="region-a",
        database=DatabaseSettings(connection_string=f"sqlite:///{tmp_path / 'a.db'}"),  # type: ignore[arg-type]
        sync={  # type: ignore[arg-type]
            "enabled": True,
            "backend": "postgres",
            "connection_url": database,
            "table": table,
        },
    )
    return TestClient(create_app(settings, disable_schedulers=True))


def test_a_table_that_is_no_journal_keeps_writes_queued_until_patched(
    database: str, tmp_path: Path
) -> None:
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.audit (id INT PRIMARY KEY, who TEXT)")  # a wrong table
    broker = Broker("postgres", database, database, table=TABLE, channel="memoria_sync")
    b = Region("region-b", sqlite_url(tmp_path, "b"), broker.sync(reader=True)).start()
    try:
        with _serve(tmp_path, database, "public.audit") as a:
            created = a.post("/memories", json={"text": "must not be lost", "y_coord": 1})
            assert created.status_code == 201
            mid = created.json()["id"]

            def refused() -> bool:
                return "not a sync journal" in a.get("/healthz").json()["sync"]["detail"]

            wait_until(refused, what="the refusal in /healthz")
            health = a.get("/healthz").json()
            assert health["status"] == "degraded" and health["sync"]["outbox_depth"] == 1
            assert "public.audit" in health["sync"]["detail"]
            metrics = a.get("/metrics").text
            assert 'memoria_sync_publish_refused_total{reason="not_a_journal"}' in metrics
            with psycopg.connect(database) as conn:  # refused, never altered
                columns = conn.execute(
                    "SELECT column_name FROM information_schema.columns "
                    "WHERE table_name = 'audit' ORDER BY ordinal_position"
                ).fetchall()
            assert columns == [("id",), ("who",)]
            assert mid not in b.ids()

            fixed = a.patch("/settings", json={"sync.table": TABLE})  # the operator's fix
            assert fixed.status_code == 200, fixed.text
            wait_until(lambda: mid in b.ids(), what="the queued write, once the setting is fixed")
            wait_until(lambda: a.get("/healthz").json()["status"] == "ok", what="healthy again")
            assert a.get("/healthz").json()["sync"]["outbox_depth"] == 0
    finally:
        b.stop()


def test_a_missing_privilege_keeps_writes_queued_until_granted(
    database: str, tmp_path: Path
) -> None:
    role = f"limited_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS infra")
        conn.execute(
            f"CREATE TABLE {TABLE} (id BIGSERIAL PRIMARY KEY, created_at TIMESTAMPTZ NOT NULL "
            "DEFAULT NOW(), payload JSONB NOT NULL, channel TEXT, event_id TEXT)"
        )
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute(f"GRANT USAGE ON SCHEMA infra TO {role}")
        conn.execute(f"GRANT SELECT ON {TABLE} TO {role}")  # reads, but may not append
    limited = database.replace("postgres@", f"{role}@")
    broker = Broker("postgres", limited, database, table=TABLE, channel="memoria_sync")
    a = Region("region-a", sqlite_url(tmp_path, "a"), broker.sync(reader=False))
    b = Region("region-b", sqlite_url(tmp_path, "b"), broker.sync(reader=True))
    a.start()
    b.start()
    try:
        mid = a.write("waits for a privilege", y=0)
        wait_until(lambda: a.sync.relay.refused, what="the refusal")
        assert "permission denied" in a.sync.health().detail
        assert a.count("memoria_sync_publish_refused_total", reason="insufficient_privilege") >= 1
        assert a.store.outbox_depth("region-a") == 1
        with psycopg.connect(database, autocommit=True) as conn:  # the DBA's fix, no restart
            conn.execute(f"GRANT INSERT ON {TABLE} TO {role}")
            conn.execute(f"GRANT USAGE ON SEQUENCE infra.memoria_sync_events_id_seq TO {role}")
        wait_until(lambda: mid in b.ids(), timeout=30, what="the queued write, once granted")
        assert a.store.outbox_depth("region-a") == 0
    finally:
        a.stop()
        b.stop()


def test_a_sql_ascii_database_carries_events_too(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    """A server made by initdb without a locale (a container's default) has SQL_ASCII
    databases, where psycopg hands back bytes; the journal must still be recognised (it was
    refused as 'not a sync journal' on the test bed's PostgreSQL pod before this was fixed)."""
    name = f"ascii_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server.url(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' "
                     "TEMPLATE template0")  # fmt: skip
    database = postgres_server.url(name)
    broker = Broker("postgres", database, database, table=TABLE, channel="memoria_sync")
    with two_regions(broker, tmp_path) as (a, b):
        mid = a.write("über ascii", y=1)
        wait_until(lambda: mid in b.ids(), what="the write through a SQL_ASCII database")
        assert b.store.get_memory(mid).text == "über ascii"
        assert a.runtime.health()["sync"]["state"] == "ok"
