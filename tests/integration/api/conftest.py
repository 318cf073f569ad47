"""The API's test client: the real ASGI app on a real SQLite store, with an API key."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from memoria import create_app
from memoria.settings import MemoriaSettings, SyncSettings


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    """A region ``api-test`` with ``MEMORIA_API_KEY=s3cret`` and in-process sync."""
    settings = MemoriaSettings(
        region="api-test",
        database={"connection_string": f"sqlite:///{tmp_path / 'api.db'}"},  # type: ignore[arg-type]
        MEMORIA_API_KEY="s3cret",  # type: ignore[call-arg]
        sync=SyncSettings(enabled=True, channel=f"api{tmp_path.name[-8:]}"),
    )
    with TestClient(create_app(settings)) as test_client:
        yield test_client
