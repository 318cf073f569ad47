"""Settings from the environment and through the settings API."""

from __future__ import annotations

import logging

import pytest

from memoria.errors import SettingsError
from memoria.settings import (
    SettingsUpdateError,
    SyncBackendName,
    apply_updates,
    load_settings,
    mask_url,
    public_view,
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("MEMORIA_") or name in {"DECREMENT_TZ", "DISABLE_SCHEDULERS"}:
            monkeypatch.delenv(name)


def test_defaults_need_no_configuration() -> None:
    settings = load_settings()
    assert settings.sync.backend is SyncBackendName.MEMORY
    assert settings.database.connection_string.get_secret_value() == "sqlite:///memoria.db"
    assert settings.decrement_tz == "UTC"
    assert settings.privacy_range == (-15, 15)


def test_guide_environment_names(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "MEMORIA_SYNC__ENABLED": "true",
        "MEMORIA_SYNC__BACKEND": "postgres",
        "MEMORIA_SYNC__CONNECTION_URL": "postgresql://memoria:secret@writer:5432/memoria",
        "MEMORIA_SYNC__CHANNEL": "memoria_sync",
        "MEMORIA_SYNC__TABLE": "infra.memoria_sync_events",
        "MEMORIA_SYNC__PRIVACY_FLOOR": "-5",
        "MEMORIA_SYNC__PRIVACY_CEILING": "15",
        "MEMORIA_SYNC__REALTIME_REPLICATION": "true",
        "DECREMENT_TZ": "America/New_York",
        "DISABLE_SCHEDULERS": "true",
        "MEMORIA_API_KEY": "k3y",
        "MEMORIA_DATABASE__CONNECTION_STRING": "postgresql://store/memoria",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s = load_settings()
    assert s.sync.enabled and s.sync.backend is SyncBackendName.POSTGRES
    assert s.sync.table == "infra.memoria_sync_events"
    assert s.privacy_range == (-5, 15)
    assert s.decrement_tz == "America/New_York" and s.disable_schedulers
    assert s.api_key is not None and s.api_key.get_secret_value() == "k3y"
    assert "secret" not in repr(s)  # secrets never show in reprs or logs


def test_database_url_alias(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMORIA_DATABASE_URL", "postgresql://alias/db")
    assert load_settings().database.connection_string.get_secret_value() == "postgresql://alias/db"
    monkeypatch.setenv("MEMORIA_DATABASE__CONNECTION_STRING", "sqlite:///primary.db")
    assert load_settings().database.connection_string.get_secret_value() == "sqlite:///primary.db"


@pytest.mark.parametrize("name", ["MEMORIA_SYNC__PRIVACY_FLOOR", "MEMORIA_SYNC__PRIVACY_CEILING"])
def test_out_of_range_privacy_env_is_ignored_with_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, name: str
) -> None:
    monkeypatch.setenv(name, "42")
    with caplog.at_level(logging.WARNING):
        s = load_settings()
    assert s.privacy_range == (-15, 15)
    assert any(name in r.getMessage() and "ignoring" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"MEMORIA_SYNC__BACKEND": "kafka"}, "MEMORIA_SYNC__BACKEND"),
        ({"MEMORIA_SYNC__ENABLED": "maybe"}, "MEMORIA_SYNC__ENABLED"),
        ({"MEMORIA_SYNC__PRIVACY_FLOOR": "high"}, "MEMORIA_SYNC__PRIVACY_FLOOR"),
        (
            {"MEMORIA_SYNC__PRIVACY_FLOOR": "5", "MEMORIA_SYNC__PRIVACY_CEILING": "2"},
            "privacy_floor (5) must not exceed privacy_ceiling (2)",
        ),
        (
            {"MEMORIA_SYNC__ENABLED": "true", "MEMORIA_SYNC__BACKEND": "redis"},
            "connection_url is required with backend redis",
        ),
        ({"MEMORIA_SYNC__TABLE": "bad name"}, "MEMORIA_SYNC__TABLE"),
        ({"DECREMENT_TZ": "Mars/Olympus"}, "DECREMENT_TZ"),
        ({"DISABLE_SCHEDULERS": "perhaps"}, "DISABLE_SCHEDULERS"),
        (
            {"MEMORIA_DATABASE__CONNECTION_STRING": "mysql://x"},
            "MEMORIA_DATABASE__CONNECTION_STRING",
        ),
    ],
)
def test_invalid_settings_fail_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], needle: str
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert needle in str(err.value)


def test_secret_url_is_not_in_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMORIA_SYNC__CONNECTION_URL", "redis://:hunter2@redis:6379/0")
    monkeypatch.setenv("MEMORIA_SYNC__TABLE", "x")  # an error with the URL set
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert "hunter2" not in str(err.value)


def test_apply_updates_validates_all_before_applying() -> None:
    current = load_settings()
    new = apply_updates(current, {"sync.privacy_floor": 0, "sync.realtime_replication": False})
    assert new.privacy_range == (0, 15) and not new.sync.realtime_replication
    assert current.privacy_range == (-15, 15)  # the old object is untouched


def test_apply_updates_moves_the_scheduler_clock() -> None:
    current = load_settings()
    new = apply_updates(current, {"scheduler.clock_offset_seconds": -86400.5})
    assert new.scheduler.clock_offset_seconds == -86400.5
    assert new.scheduler.max_catch_up_days == current.scheduler.max_catch_up_days
    assert (
        apply_updates(new, {"scheduler.clock_offset_seconds": 3}).scheduler.clock_offset_seconds
        == 3
    )
    assert current.scheduler.clock_offset_seconds == 0.0  # the old object is untouched


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ({"sync.nope": 1}, "sync.nope"),
        ({"sync.privacy_floor": "5"}, "sync.privacy_floor"),
        ({"sync.privacy_floor": 16}, "sync.privacy_floor"),
        ({"sync.privacy_ceiling": -16}, "sync.privacy_ceiling"),
        ({"sync.privacy_floor": 5, "sync.privacy_ceiling": 2}, "sync.privacy_floor"),
        ({"sync.enabled": "yes"}, "sync.enabled"),
        ({"sync.backend": "kafka"}, "sync.backend"),
        ({"decrement_tz": "Nowhere/Land"}, "decrement_tz"),
        ({"decrement_tz": "Z" * 300}, "decrement_tz"),  # found by the fuzz test: ENAMETOOLONG
        ({"disable_schedulers": 1}, "disable_schedulers"),
        ({"scheduler.clock_offset_seconds": "5"}, "scheduler.clock_offset_seconds"),
        ({"scheduler.clock_offset_seconds": True}, "scheduler.clock_offset_seconds"),
        ({"scheduler.clock_offset_seconds": None}, "scheduler.clock_offset_seconds"),
        ({"scheduler.clock_offset_seconds": 1e308}, "scheduler.clock_offset_seconds"),
    ],
)
def test_apply_updates_refuses_naming_the_key(body: dict[str, object], key: str) -> None:
    with pytest.raises(SettingsUpdateError) as err:
        apply_updates(load_settings(), body)
    assert key in err.value.problems, err.value.problems


def test_mask_url_and_public_view() -> None:
    assert mask_url("postgresql://u:pw@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert mask_url("redis://:pw@h:6379/0") == "redis://:***@h:6379/0"
    assert mask_url("postgresql://h/db?password=pw&x=1") == "postgresql://h/db?password=***&x=1"
    s = apply_updates(load_settings(), {"sync.connection_url": "redis://:pw@h:6379/0"})
    assert "pw@" not in str(public_view(s))


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("postgresql://u:p@ss@db:5432/x", "ss"),
        ("postgresql://u:50%off@db/x", "50%off"),
        ("postgresql://u:pa/ss@db/x", "pa/ss"),
        ("could not connect to postgresql://u:a@b@h/d: timeout", "a@b"),
        ("postgresql://db/x?user=u&password=p%zz", "p%zz"),
    ],
)
def test_mask_url_leaves_no_part_of_a_malformed_password(text: str, secret: str) -> None:
    from memoria.settings import mask_url

    masked = mask_url(text)
    assert secret not in masked
    assert "***" in masked
