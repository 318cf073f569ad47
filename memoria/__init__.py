"""Memoria region runtime: settings, store, sync, privacy filter, scheduler, HTTP API.

The public names below are imported on first use (PEP 562), so ``import memoria`` (and the
operator, which needs only its contract and settings) does not load FastAPI, redis or psycopg.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> the module that defines it
_EXPORTS = {
    "cancel_daily_decrement_timer": ".api",
    "create_app": ".api",
    "restart_daily_decrement_schedule": ".api",
    "BrokerUnavailable": ".errors",
    "EventFormatError": ".errors",
    "LeadershipError": ".errors",
    "MemoriaError": ".errors",
    "MemoryNotFound": ".errors",
    "NotConfigured": ".errors",
    "SettingsError": ".errors",
    "StoreError": ".errors",
    "SyncError": ".errors",
    "PrivacyRange": ".privacy",
    "MemoriaSettings": ".settings",
    "SyncSettings": ".settings",
    "load_settings": ".settings",
    "MemoryStore": ".store",
    "InProcessSyncBackend": ".sync",
    "PostgresSyncBackend": ".sync",
    "RedisSyncBackend": ".sync",
    "SyncEvent": ".sync",
}

__all__ = [
    "BrokerUnavailable",
    "EventFormatError",
    "InProcessSyncBackend",
    "LeadershipError",
    "MemoriaError",
    "MemoriaSettings",
    "MemoryNotFound",
    "MemoryStore",
    "NotConfigured",
    "PostgresSyncBackend",
    "PrivacyRange",
    "RedisSyncBackend",
    "SettingsError",
    "StoreError",
    "SyncError",
    "SyncEvent",
    "SyncSettings",
    "cancel_daily_decrement_timer",
    "create_app",
    "load_settings",
    "restart_daily_decrement_schedule",
]
assert set(__all__) == set(_EXPORTS), "keep __all__ and _EXPORTS in step"


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'memoria' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # what type checkers and IDEs see
    from .api import cancel_daily_decrement_timer, create_app, restart_daily_decrement_schedule
    from .errors import (
        BrokerUnavailable,
        EventFormatError,
        LeadershipError,
        MemoriaError,
        MemoryNotFound,
        NotConfigured,
        SettingsError,
        StoreError,
        SyncError,
    )
    from .privacy import PrivacyRange
    from .settings import MemoriaSettings, SyncSettings, load_settings
    from .store import MemoryStore
    from .sync import InProcessSyncBackend, PostgresSyncBackend, RedisSyncBackend, SyncEvent
