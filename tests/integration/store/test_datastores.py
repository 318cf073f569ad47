"""The Redis and PostgreSQL fixtures are real servers that survive a stop/restart mid-test."""

from __future__ import annotations

import psycopg
import pytest
import redis

from testbed import PostgresServer, RedisServer, wait_until

pytestmark = pytest.mark.integration


def test_redis_keeps_data_and_port_across_restart(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url)
    client.xadd("restart-test", {"n": "1"})
    redis_server.stop()
    assert not redis_server.ping()
    with pytest.raises(redis.ConnectionError):
        client.ping()
    redis_server.start()
    assert client.xlen("restart-test") == 1  # append-only file replayed; same URL works


def test_redis_replica_follows_primary(
    redis_server: RedisServer, redis_factory: list[RedisServer]
) -> None:
    replica = RedisServer(replica_of=redis_server)
    redis_factory.append(replica)
    replica.start()
    redis.Redis.from_url(redis_server.url).set("replicated-key", "yes")
    reader = redis.Redis.from_url(replica.url)
    wait_until(lambda: reader.get("replicated-key") == b"yes", 10, "replication")
    with pytest.raises(redis.ReadOnlyError):
        reader.set("x", "1")


def test_postgres_keeps_data_and_port_across_restart(postgres_server: PostgresServer) -> None:
    url = postgres_server.create_database("restart_test")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS t (x int)")
        conn.execute("INSERT INTO t VALUES (42)")
    postgres_server.restart()
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT x FROM t").fetchall() == [(42,)]


def test_postgres_stop_breaks_connections_then_comes_back(postgres_server: PostgresServer) -> None:
    conn = psycopg.connect(postgres_server.url(), autocommit=True)
    postgres_server.stop()
    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")
    postgres_server.start()
    with psycopg.connect(postgres_server.url()) as fresh:
        assert fresh.execute("SELECT 1").fetchone() == (1,)
