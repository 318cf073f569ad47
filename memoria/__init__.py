"""Memoria region runtime: settings, store, sync, privacy filter, scheduler, HTTP API."""

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
