"""Exceptions of the region runtime.

::

    MemoriaError
    ├── SettingsError            invalid configuration (names the variable or key)
    │   └── SettingsUpdateError  a refused PATCH /settings (memoria.settings)
    ├── StoreError               the memory store failed
    │   └── MemoryNotFound       no memory with that id
    ├── SyncError                a sync backend failed
    │   ├── BrokerUnavailable    the broker cannot be reached right now (retried, never fatal)
    │   └── EventFormatError     an inbound payload is not a valid SyncEvent (logged, skipped)
    └── LeadershipError          the Kubernetes side of leadership failed (promote, Lease)
        └── NotConfigured        no Kubernetes credentials or identity for this region
"""

from __future__ import annotations


class MemoriaError(Exception):
    """Base of every error raised by the runtime."""


class SettingsError(MemoriaError):
    """Invalid configuration."""


class StoreError(MemoriaError):
    """The memory store failed."""


class MemoryNotFound(StoreError):
    """No memory with that id."""


class SyncError(MemoriaError):
    """A sync backend failed."""


class BrokerUnavailable(SyncError):
    """The broker cannot be reached; the caller keeps the event and retries."""


class EventFormatError(SyncError):
    """An inbound payload is not a valid SyncEvent."""


class LeadershipError(MemoriaError):
    """Talking to Kubernetes about leadership failed."""


class NotConfigured(LeadershipError):
    """This region has no Kubernetes credentials or no identity to act on."""
