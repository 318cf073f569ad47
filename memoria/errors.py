"""Exceptions of the region runtime.

::

    MemoriaError
    ├── SettingsError            invalid configuration (names the variable or key)
    │   └── SettingsUpdateError  a refused PATCH /settings (memoria.settings)
    ├── StoreError               the memory store failed
    │   ├── StoreUnavailable     cannot reach the store right now (retried)
    │   └── MemoryNotFound       no memory with that id
    ├── SyncError                a sync backend failed
    │   ├── BrokerUnavailable    the broker cannot be reached right now (retried, never fatal)
    │   ├── BrokerBusy           a relay is stuck in a publish; a live switch was not applied
    │   ├── EventRejected        the broker refuses this event's content (dropped, logged)
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


class StoreUnavailable(StoreError):
    """The store cannot be reached right now (connection lost, locked): retry later."""


class MemoryNotFound(StoreError):
    """No memory with that id."""


class SyncError(MemoriaError):
    """A sync backend failed."""


class BrokerUnavailable(SyncError):
    """The broker cannot be reached; the caller keeps the event and retries."""


class BrokerBusy(SyncError):
    """The relay has been inside one publish for too long (a stalled broker)."""


class EventRejected(SyncError):
    """The broker refuses an event for its content (it would refuse it on every retry)."""


class EventFormatError(SyncError):
    """An inbound payload is not a valid SyncEvent."""


class LeadershipError(MemoriaError):
    """Talking to Kubernetes about leadership failed."""


class NotConfigured(LeadershipError):
    """This region has no Kubernetes credentials or no identity to act on."""
