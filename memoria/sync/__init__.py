"""Sync between regions: the SyncEvent contract, backends, and the coordinator."""

from __future__ import annotations

from ..settings import SyncBackendName, SyncSettings
from .base import BEGINNING, Subscription, SyncBackend
from .events import Action, Delivery, EntityType, SyncEvent
from .memory import InProcessSyncBackend
from .postgres import PostgresSyncBackend
from .redis import RedisSyncBackend


def create_backend(settings: SyncSettings) -> SyncBackend:
    """The backend the settings name, not yet connected (connections are made lazily)."""
    if settings.backend is SyncBackendName.REDIS:
        return RedisSyncBackend(settings.connection, channel=settings.channel)
    if settings.backend is SyncBackendName.POSTGRES:
        return PostgresSyncBackend(
            settings.connection, channel=settings.channel, table=settings.table
        )
    return InProcessSyncBackend(channel=settings.channel)


__all__ = [
    "BEGINNING",
    "Action",
    "Delivery",
    "EntityType",
    "InProcessSyncBackend",
    "PostgresSyncBackend",
    "RedisSyncBackend",
    "Subscription",
    "SyncBackend",
    "SyncEvent",
    "create_backend",
]
