"""The HTTP API on a real store, through FastAPI's test client (the real ASGI app)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from fastapi.testclient import TestClient

from memoria import cancel_daily_decrement_timer, create_app, restart_daily_decrement_schedule
from memoria.errors import SettingsError
from memoria.settings import MemoriaSettings, load_settings
from testbed import RedisServer, wait_until

pytestmark = pytest.mark.integration

KEY = {"X-API-Key": "s3cret"}


def test_memory_crud(client: TestClient) -> None:
    created = client.post("/memories", json={"text": "hello", "y_coord": 3, "namespace": "n"})
    assert created.status_code == 201
    body = created.json()
    # versions are a hybrid clock in microseconds: at least the time of the write
    assert body["version"] > 1_700_000_000_000_000
    assert body["x_coord"] == 0 and body["origin"] == "api-test"
    mid = body["id"]
    assert client.get(f"/memories/{mid}").json()["text"] == "hello"
    listed = client.get("/memories", params={"namespace": "n"}).json()
    assert [m["id"] for m in listed["items"]] == [mid]
    patched = client.patch(f"/memories/{mid}", json={"text": "changed", "y_coord": -2})
    assert patched.json()["version"] > body["version"] and patched.json()["y_coord"] == -2
    assert client.delete(f"/memories/{mid}").status_code == 204
    assert client.get(f"/memories/{mid}").status_code == 404
    assert client.delete(f"/memories/{mid}").status_code == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"text": "x", "y_coord": 16}, "y_coord"),
        ({"text": "x", "y_coord": -15.5}, "y_coord"),
        ({"text": "", "y_coord": 0}, "text"),
        ({"y_coord": 0}, "text"),
        ({"text": "x"}, "y_coord"),
        ({"text": "x", "y_coord": "high"}, "y_coord"),
        ({"text": "x", "y_coord": 0, "colour": "red"}, "colour"),
    ],
)
def test_bad_memory_is_422_naming_the_field(
    client: TestClient, body: dict[str, object], field: str
) -> None:
    resp = client.post("/memories", json=body)
    assert resp.status_code == 422
    assert field in resp.json()["detail"]


def test_malformed_json_is_400(client: TestClient) -> None:
    for path, method in (("/memories", "POST"), ("/settings", "PATCH")):
        resp = client.request(
            method, path, content=b"{not json", headers={**KEY, "content-type": "application/json"}
        )
        assert resp.status_code == 400, (path, resp.text)


def test_api_key_required_on_settings_and_admin(client: TestClient) -> None:
    for method, path in (
        ("GET", "/settings"),
        ("PATCH", "/settings"),
        ("POST", "/admin/promote"),
        ("POST", "/admin/decrement"),
    ):
        assert client.request(method, path).status_code == 401
        wrong = client.request(method, path, headers={"X-API-Key": "s3cret-not"})
        assert wrong.status_code == 401
    assert client.get("/settings", headers=KEY).status_code == 200
    # the memory and health endpoints stay open
    assert client.get("/healthz").status_code == 200


def test_settings_patch_applies_live(client: TestClient) -> None:
    resp = client.patch(
        "/settings",
        headers=KEY,
        json={
            "sync.privacy_floor": 0,
            "sync.privacy_ceiling": 10,
            "sync.realtime_replication": False,
        },
    )
    assert resp.status_code == 200, resp.text
    view = client.get("/settings", headers=KEY).json()
    assert (view["sync"]["privacy_floor"], view["sync"]["privacy_ceiling"]) == (0, 10)
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    assert runtime.sync.privacy.floor == 0  # the running filter, not only the stored value


@pytest.mark.parametrize(
    ("body", "keys"),
    [
        ({"sync.unknown": 1}, {"sync.unknown"}),
        ({"sync.privacy_floor": "0"}, {"sync.privacy_floor"}),
        ({"sync.privacy_floor": 5, "sync.privacy_ceiling": 2}, {"sync.privacy_floor"}),
        ({"sync.privacy_ceiling": 16}, {"sync.privacy_ceiling"}),
        ({"sync.privacy_floor": -20, "sync.bogus": True}, {"sync.privacy_floor", "sync.bogus"}),
        ({"sync.enabled": "true"}, {"sync.enabled"}),
        ({"sync.backend": "kafka"}, {"sync.backend"}),
        ({"sync.backend": "redis"}, {"sync.connection_url"}),
        ({"decrement_tz": "Atlantis/Capital"}, {"decrement_tz"}),
        ({"sync.privacy_floor": 0, "sync.channel": ""}, {"sync.channel"}),
    ],
)
def test_invalid_settings_patch_is_422_and_changes_nothing(
    client: TestClient, body: dict[str, object], keys: set[str]
) -> None:
    before = client.get("/settings", headers=KEY).json()
    resp = client.patch("/settings", headers=KEY, json=body)
    assert resp.status_code == 422, resp.text
    assert keys <= set(resp.json()["detail"]), resp.json()
    assert client.get("/settings", headers=KEY).json() == before


def test_settings_patch_body_must_be_an_object(client: TestClient) -> None:
    assert client.patch("/settings", headers=KEY, json=[1, 2]).status_code == 422
    assert client.patch("/settings", headers=KEY, json={}).status_code == 422


def test_switching_backend_live_keeps_the_outbox(  # type: ignore[no-untyped-def]
    client: TestClient, redis_server, redis_factory
) -> None:
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    # the start-up decrement's event goes out first (in-process bus), so the count below is ours
    wait_until(
        lambda: (
            runtime.scheduler.last_outcome is not None
            and not runtime.store.outbox_depth("api-test")
        ),
        10,
        "the start-up decrement published",
    )
    assert runtime.scheduler.last_outcome is not None
    assert runtime.store.outbox_depth("api-test") == 0
    doomed = RedisServer()
    redis_factory.append(doomed)
    doomed.start()
    switch = {"sync.backend": "redis", "sync.connection_url": doomed.url}
    assert client.patch("/settings", headers=KEY, json=switch).status_code == 200
    doomed.stop()  # the broker goes away after the switch
    mid = client.post("/memories", json={"text": "queued", "y_coord": 0}).json()["id"]
    assert runtime.store.outbox_depth("api-test") == 1  # broker unreachable: kept
    assert client.get("/healthz").json()["sync"]["state"] in {"degraded", "down"}
    resp = client.patch("/settings", headers=KEY, json={"sync.connection_url": redis_server.url})
    assert resp.status_code == 200
    assert str(doomed.port) not in resp.text
    wait_until(lambda: not runtime.store.outbox_depth("api-test"), 10, "the outbox drained")
    assert runtime.store.outbox_depth("api-test") == 0
    import redis as redis_lib

    stream = redis_lib.Redis.from_url(redis_server.url).xrange(
        f"{runtime.settings.sync.channel}:journal"
    )
    assert any(mid.encode() in fields[b"event"] for _, fields in stream)


def test_healthz_and_metrics(client: TestClient) -> None:
    health = client.get("/healthz").json()
    assert health["status"] == "ok"
    assert health["store"]["state"] == "ok"
    assert health["sync"]["state"] == "ok"
    assert "armed" in health["scheduler"]
    client.post("/memories", json={"text": "m", "y_coord": 0})
    text = client.get("/metrics").text
    for name in (
        "memoria_writes_total",
        "memoria_sync_events_published_total",
        "memoria_sync_events_received_total",
        "memoria_sync_outbox_depth",
        "memoria_sync_listener_reconnects",
        "memoria_decrement_runs_total",
        "memoria_scheduler_leader",
    ):
        assert name in text, name


def test_promote_without_kubernetes_is_a_clear_409(client: TestClient) -> None:
    resp = client.post("/admin/promote", headers=KEY)
    assert resp.status_code == 409
    assert "MEMORIA_LEADERSHIP__IDENTITY" in resp.json()["detail"]


def test_promote_without_credentials_is_503(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    settings = MemoriaSettings(
        database={"connection_string": f"sqlite:///{tmp_path / 'p.db'}"},  # type: ignore[arg-type]
        leadership={"identity": "ns/region-a"},  # type: ignore[arg-type]
    )
    with TestClient(create_app(settings)) as c:
        resp = c.post("/admin/promote")
    assert resp.status_code == 503
    assert "no Kubernetes credentials" in resp.json()["detail"]


def test_guide_timer_helpers(client: TestClient) -> None:
    app = client.app
    runtime = app.state.runtime  # type: ignore[attr-defined]
    cancel_daily_decrement_timer(app)  # type: ignore[arg-type]
    wait_until(lambda: not runtime.scheduler.armed, 5, "the timer cancelled")
    assert not runtime.scheduler.armed
    assert client.post("/admin/decrement", headers=KEY).status_code == 200  # manual still works
    restart_daily_decrement_schedule(app)  # type: ignore[arg-type]
    wait_until(lambda: runtime.scheduler.armed, 5, "the timer armed again")
    assert runtime.scheduler.armed


def test_disable_schedulers_is_a_hard_opt_out(tmp_path: Path) -> None:
    settings = MemoriaSettings(
        database={"connection_string": f"sqlite:///{tmp_path / 'd.db'}"},  # type: ignore[arg-type]
    )
    with TestClient(create_app(settings, disable_schedulers=True)) as c:
        c.post("/memories", json={"text": "m", "y_coord": 0})
        runtime = c.app.state.runtime  # type: ignore[attr-defined]
        restart_daily_decrement_schedule(c.app)  # type: ignore[arg-type]
        import time

        time.sleep(0.3)
        assert not runtime.scheduler.armed
        assert runtime.store.metadata()["last_decrement_date"] == ""
        assert c.post("/admin/decrement").status_code == 409


# -- limits where input enters (issue 15, rows 6, 9 and 11) ----------------------------------


def test_a_declared_body_over_the_limit_is_refused_unread(client: TestClient) -> None:
    text = "x" * (1100 * 1024)
    resp = client.post("/memories", json={"text": text, "y_coord": 0})
    assert resp.status_code == 413
    assert resp.json() == {"detail": "request body larger than 1048576 bytes"}
    assert client.get("/memories").json()["items"] == []


def test_a_chunked_body_over_the_limit_is_refused_as_it_arrives(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"y_coord": 0, "text": "'
        for _ in range(1100):
            yield b"y" * 1024
        yield b'"}'

    resp = client.post("/memories", content=chunks(), headers={"Content-Type": "application/json"})
    assert resp.status_code == 413
    assert client.get("/memories").json()["items"] == []


def test_a_body_within_the_limit_still_works(client: TestClient) -> None:
    resp = client.post("/memories", json={"text": "x" * 1000, "y_coord": 1})
    assert resp.status_code == 201


def test_many_unknown_keys_get_a_capped_answer(client: TestClient) -> None:
    body = {"text": "x", "y_coord": 0, **{f"k{i}": i for i in range(5000)}}
    raw = orjson.dumps(body)
    assert len(raw) < 1 << 20
    resp = client.post("/memories", content=raw, headers={"Content-Type": "application/json"})
    assert resp.status_code == 422
    detail = resp.json()["detail"]
    assert len(detail) == 21
    assert detail["..."] == "4980 more problem(s) not shown"
    assert len(resp.content) < 4096


def test_an_empty_api_key_is_refused_at_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMORIA_API_KEY", "  ")
    with pytest.raises(SettingsError, match="MEMORIA_API_KEY"):
        load_settings()


def test_healthz_without_the_key_gives_states_not_details(client: TestClient) -> None:
    public = client.get("/healthz")
    assert public.status_code == 200
    body = public.json()
    assert body["status"] == "ok" and body["scheduler"]["leading"] in (True, False)
    assert "url" not in body["store"] and "detail" not in body["sync"]
    assert "sqlite" not in public.text
    full = client.get("/healthz", headers=KEY).json()
    assert full["store"]["url"].startswith("sqlite:///")
    assert "detail" in full["sync"]


def test_healthz_names_the_last_decrement_and_who_ran_it(client: TestClient) -> None:
    # what `kubectl memoria status` shows per region, read without the key
    ran = client.post("/admin/decrement", headers=KEY).json()
    assert ran["reason"] in ("ran", "already"), ran  # the start-up catch-up may have run it
    public = client.get("/healthz").json()["decrement"]
    assert public["date"] == ran["date"]
    assert public["by"] == "api-test"


def test_api_requests_are_counted_and_timed_by_route_template(client: TestClient) -> None:
    created = client.post("/memories", json={"text": "m", "y_coord": 0}).json()["id"]
    client.get(f"/memories/{created}")
    client.get("/memories/not-there")
    client.get("/no/such/route")
    text = client.get("/metrics").text
    count = "memoria_http_requests_total{{code={!r},method={!r},route={!r}}} 1.0"
    for code, method, route in (
        ("201", "POST", "/memories"),
        ("200", "GET", "/memories/{memory_id}"),
        ("404", "GET", "/memories/{memory_id}"),
        ("404", "GET", "unmatched"),
    ):
        assert count.format(code, method, route).replace("'", '"') in text, (code, route)
    assert created not in text  # ids never become label values
    timed = 'memoria_http_request_duration_seconds_count{method="POST",route="/memories"} 1.0'
    assert timed in text
