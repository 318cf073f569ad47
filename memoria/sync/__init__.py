"""Sync between regions, the transport side: the SyncEvent contract and the backends.

``events`` is the envelope and ``payload`` the memory payload, both as the guide's reference
implementation puts them on the wire; ``redis``, ``postgres`` (with ``pg_journal`` and
``pg_notes``) and ``memory`` are the backends, ``base`` what they share, ``sender`` what makes
the guide's one-event ``publish()`` fast and ``trust`` the bounds no peer's event may pass.

The parts that also touch the store live in their own modules and are imported from there
(the store imports this package's events, so this package must not import them):
``relay`` (the outbox relay), ``applier`` (the inbound applier) and ``link`` (the backend
connection that feeds both, switched live). The write path that fills the outbox is
``memoria.writes``.
"""

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
