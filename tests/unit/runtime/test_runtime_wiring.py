"""Which parts a region's settings build, and that they are wired to each other: SQLite in a tmp
dir and the embedded in-process bus, so no server is needed."""

from __future__ import annotations

import datetime as dt
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from memoria.api import cancel_daily_decrement_timer, create_app, restart_daily_decrement_schedule
from memoria.leadership import LeaseWatcher
from memoria.ports import LeadershipSource
from memoria.runtime import HealthState, Runtime
from memoria.settings import DatabaseSettings, LeadershipSettings, MemoriaSettings, SyncSettings
from memoria.sync import InProcessSyncBackend, PostgresSyncBackend, RedisSyncBackend
from memoria.sync import create_backend as real_create_backend
from memoria.sync.base import SyncBackend
from memoria.sync.link import SyncState

Eventually = Callable[[Callable[[], bool], str], None]  # the fixture in conftest.py


@pytest.fixture(autouse=True)
def _no_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    guide_names = {"DECREMENT_TZ", "DISABLE_SCHEDULERS"}
    for name in [n for n in os.environ if n.startswith("MEMORIA_") or n in guide_names]:
        monkeypatch.delenv(name)


def _settings(tmp: Path, region: str = "r", **changes: Any) -> MemoriaSettings:
    return MemoriaSettings(
        region=region,
        database=DatabaseSettings(connection_string=SecretStr(f"sqlite:///{tmp / region}.db")),
        **changes,
    )


def _bus(**changes: Any) -> SyncSettings:
    """Sync on over the embedded bus, on a channel of this test's own."""
    return SyncSettings(enabled=True, channel=f"c{uuid.uuid4().hex[:12]}", **changes)


@contextmanager
def _running(runtime: Runtime) -> Iterator[Runtime]:
    runtime.start()
    try:
        yield runtime
    finally:
        runtime.stop(flush_timeout=1)


def test_defaults_build_a_standalone_region_on_sqlite_with_sync_off(tmp_path: Path) -> None:
    runtime = Runtime(_settings(tmp_path), disable_schedulers=True)
    assert runtime.store.url_for_humans == f"sqlite:///{tmp_path / 'r'}.db"
    assert runtime.lease is None
    assert runtime.scheduler.leadership.leading
    assert runtime.scheduler.leadership.source is LeadershipSource.STANDALONE
    assert runtime.metrics.registry.get_sample_value("memoria_scheduler_leader") == 1
    with _running(runtime):
        assert runtime.sync.backend is None
        assert runtime.sync.subscription is None
        health = runtime.health()
        assert health["status"] is HealthState.OK
        assert health["sync"]["state"] is SyncState.DISABLED
        assert health["store"]["state"] is HealthState.OK


def test_embedded_backend_is_opened_with_a_listener(tmp_path: Path, eventually: Eventually) -> None:
    sync = _bus()
    with _running(Runtime(_settings(tmp_path, sync=sync), disable_schedulers=True)) as runtime:
        assert isinstance(runtime.sync.backend, InProcessSyncBackend)
        assert runtime.sync.backend.channel_name == sync.channel
        assert runtime.sync.subscription is not None
        eventually(lambda: runtime.sync.health().state is SyncState.OK, "a connected listener")
    assert runtime.sync.backend is None  # closed by stop()


def test_without_realtime_replication_nothing_listens(tmp_path: Path) -> None:
    settings = _settings(tmp_path, sync=_bus(realtime_replication=False))
    with _running(Runtime(settings, disable_schedulers=True)) as runtime:
        assert runtime.sync.backend is not None
        assert runtime.sync.subscription is None


@pytest.mark.parametrize(
    ("sync", "kind", "source"),
    [
        ({"backend": "memory"}, InProcessSyncBackend, "memory|ch"),
        (
            {"backend": "redis", "connection_url": "redis://127.0.0.1:1/0"},
            RedisSyncBackend,
            "redis|redis://127.0.0.1:1/0|ch:journal",
        ),
        (
            {
                "backend": "postgres",
                "connection_url": "postgresql://u:pw@127.0.0.1:1/db",
                "table": "public.journal",
            },
            PostgresSyncBackend,
            "postgres|postgresql://u:***@127.0.0.1:1/db|public.journal|ch",
        ),
    ],
)
def test_the_backend_named_by_the_settings_is_built_unconnected(
    sync: dict[str, str], kind: type[SyncBackend], source: str
) -> None:
    # port 1: building it would fail if it connected now
    backend = real_create_backend(SyncSettings.model_validate({**sync, "channel": "ch"}))
    try:
        assert type(backend) is kind
        assert backend.source_id == source  # the cursor key: names the journal, no password
    finally:
        backend.close()


def test_the_runtime_builds_its_backend_from_its_sync_settings(tmp_path: Path) -> None:
    asked: list[SyncSettings] = []

    def factory(sync: SyncSettings) -> SyncBackend:
        asked.append(sync)
        return InProcessSyncBackend(channel=f"c{uuid.uuid4().hex[:12]}")

    sync = SyncSettings.model_validate(
        {"enabled": True, "backend": "redis", "connection_url": "redis://h:1/0"}
    )
    settings = _settings(tmp_path, sync=sync)
    with _running(Runtime(settings, disable_schedulers=True, backend_factory=factory)) as runtime:
        assert asked == [sync]
        runtime.update_settings({"sync.privacy_floor": 0})  # not a connection setting
        assert asked == [sync]
        runtime.update_settings({"sync.channel": "other"})  # one: reconnect
        assert [s.channel for s in asked] == ["memoria-sync", "other"]


def test_a_lease_name_makes_the_region_wait_for_its_lease(tmp_path: Path) -> None:
    leadership = LeadershipSettings(lease_name="memoria-scheduler-default", identity="ns/r")
    runtime = Runtime(_settings(tmp_path, leadership=leadership))  # not started: no API server
    try:
        assert isinstance(runtime.lease, LeaseWatcher)
        assert runtime.lease.name == "memoria-scheduler-default"
        assert not runtime.scheduler.leadership.leading
        assert not runtime.metrics.registry.get_sample_value("memoria_scheduler_leader")
    finally:
        runtime.store.close()


def test_settings_apply_live(tmp_path: Path) -> None:
    with _running(Runtime(_settings(tmp_path, sync=_bus()), disable_schedulers=True)) as runtime:
        first = runtime.sync.backend
        runtime.update_settings({"sync.privacy_floor": 0, "disable_schedulers": True})
        assert runtime.sync.privacy.floor == 0
        assert runtime.settings.disable_schedulers
        assert runtime.sync.backend is first  # the range is not a connection setting
        runtime.update_settings({"sync.enabled": False})
        assert runtime.sync.backend is None
        runtime.writes.create_memory(text="kept local", y_coord=0)
        assert runtime.store.outbox_depth("r") == 0  # nothing queued while sync is off


def test_two_regions_on_the_embedded_bus_replicate_within_their_ranges(
    tmp_path: Path, eventually: Eventually
) -> None:
    sync = _bus()
    b_sync = sync.model_copy(update={"privacy_floor": 0})
    a = Runtime(_settings(tmp_path, "a", sync=sync), disable_schedulers=True)
    b = Runtime(_settings(tmp_path, "b", sync=b_sync), disable_schedulers=True)
    with _running(a), _running(b):
        public = a.writes.create_memory(text="public", y_coord=5, namespace="n")
        private = a.writes.create_memory(text="private", y_coord=-5, namespace="n")
        eventually(lambda: [m.id for m in b.store.list_memories()] == [public.id], "replication")
        a.writes.update_memory(public.id, {"text": "changed"})
        eventually(lambda: b.store.get_memory(public.id).text == "changed", "the update")
        a.writes.delete_memory(public.id)
        eventually(lambda: not b.store.list_memories(), "the withdrawal")
        today = dt.datetime.now(dt.UTC).date().isoformat()
        assert a.writes.run_decrement(today, token=1).ran
        eventually(lambda: b.writes.last_decrement_date() == today, "the decrement at b")
        assert a.store.get_memory(private.id).x_coord == -1
        assert a.store.outbox_depth("a") == 0


def test_the_guides_timer_functions_drive_the_apps_scheduler(
    tmp_path: Path, eventually: Eventually
) -> None:
    app = create_app(_settings(tmp_path))
    runtime: Runtime = app.state.runtime
    try:
        cancel_daily_decrement_timer(app)
        assert runtime.scheduler.status()["cancelled"] is True
        restart_daily_decrement_schedule(app)  # the app is not serving: starts the thread
        today = runtime.scheduler.today().isoformat()
        eventually(lambda: runtime.writes.last_decrement_date() == today, "the catch-up")
        assert runtime.scheduler.armed
    finally:
        runtime.stop(flush_timeout=0)
