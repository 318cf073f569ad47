"""Limits where input enters the HTTP API, through the real ASGI app (FastAPI's test client):
body size before parsing, capped error answers, no empty API key, and what /healthz tells a
caller without the key (issue 15, rows 6, 9 and 11)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from fastapi.testclient import TestClient

from memoria import create_app
from memoria.errors import SettingsError
from memoria.settings import MemoriaSettings, SyncSettings, load_settings

pytestmark = pytest.mark.integration
KEY = {"X-API-Key": "s3cret-key"}


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = MemoriaSettings(
        region="limits",
        database={"connection_string": f"sqlite:///{tmp_path / 'api.db'}"},  # type: ignore[arg-type]
        MEMORIA_API_KEY="s3cret-key",  # type: ignore[call-arg]
        MEMORIA_MAX_BODY_BYTES=64 * 1024,  # type: ignore[call-arg]
        sync=SyncSettings(enabled=False),
    )
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def test_a_declared_body_over_the_limit_is_refused_unread(client: TestClient) -> None:
    text = "x" * (80 * 1024)
    resp = client.post("/memories", json={"text": text, "y_coord": 0})
    assert resp.status_code == 413
    assert resp.json() == {"detail": "request body larger than 65536 bytes"}
    assert client.get("/memories").json()["items"] == []


def test_a_chunked_body_over_the_limit_is_refused_as_it_arrives(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"y_coord": 0, "text": "'
        for _ in range(100):
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
    assert len(raw) < 64 * 1024
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
