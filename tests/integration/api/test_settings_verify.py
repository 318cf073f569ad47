"""Row 10 of the security review: ``PATCH /settings`` connects to a new sync URL, with its
credentials, before it applies it. A wrong host, port, password or database answers 422 naming
``sync.connection_url``, never echoes the password, and changes nothing."""

from __future__ import annotations

import pytest
import redis
from fastapi.testclient import TestClient

from testbed import PostgresServer, RedisServer, wait_until

pytestmark = pytest.mark.integration

KEY = {"X-API-Key": "s3cret"}
SECRET = "hunter2-not-for-logs"


@pytest.fixture
def locked_redis(redis_factory: list[RedisServer]) -> RedisServer:
    """A Redis that wants a password (SECRET)."""
    server = RedisServer()
    redis_factory.append(server)
    server.start()
    redis.Redis.from_url(server.url).config_set("requirepass", SECRET)
    return server


def _refused(client: TestClient, body: dict[str, object]) -> str:
    before = client.get("/settings", headers=KEY).json()
    resp = client.patch("/settings", headers=KEY, json=body)
    assert resp.status_code == 422, resp.text
    assert set(resp.json()["detail"]) == {"sync.connection_url"}, resp.text
    assert client.get("/settings", headers=KEY).json() == before  # nothing changed
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    assert runtime.sync.backend.name == "memory"  # the running link too
    return resp.text


def test_an_unreachable_redis_url_is_refused(client: TestClient) -> None:
    url = f"redis://:{SECRET}@127.0.0.1:9/0"
    text = _refused(client, {"sync.backend": "redis", "sync.connection_url": url})
    assert SECRET not in text


def test_a_wrong_redis_password_is_refused(client: TestClient, locked_redis: RedisServer) -> None:
    wrong = locked_redis.url.replace("redis://", "redis://:wrong-one@")
    text = _refused(client, {"sync.backend": "redis", "sync.connection_url": wrong})
    assert "wrong-one" not in text
    # without any password: refused too
    _refused(client, {"sync.backend": "redis", "sync.connection_url": locked_redis.url})


def test_a_redis_database_that_does_not_exist_is_refused(
    client: TestClient, redis_server: RedisServer
) -> None:
    url = redis_server.url.rsplit("/", 1)[0] + "/999"
    _refused(client, {"sync.backend": "redis", "sync.connection_url": url})


def test_a_postgres_database_that_does_not_exist_is_refused(
    client: TestClient, postgres_server: PostgresServer
) -> None:
    url = postgres_server.url("no_such_database_here")
    _refused(client, {"sync.backend": "postgres", "sync.connection_url": url})


def test_a_right_url_with_its_password_is_applied(
    client: TestClient, locked_redis: RedisServer
) -> None:
    right = locked_redis.url.replace("redis://", f"redis://:{SECRET}@")
    resp = client.patch(
        "/settings", headers=KEY, json={"sync.backend": "redis", "sync.connection_url": right}
    )
    assert resp.status_code == 200, resp.text
    assert SECRET not in resp.text
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    assert runtime.sync.backend.name == "redis"
    wait_until(lambda: runtime.sync.health().state == "ok", 10, "sync ok on the new Redis")
