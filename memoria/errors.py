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
    │   │   └── BrokerRefused    it is reached but refuses events for its setup (wrong table,
    │   │                        no privilege, read-only): kept queued until the setting is fixed
    │   ├── BrokerBusy           a relay is stuck in a publish; a live switch was not applied
    │   ├── EventRejected        the broker refuses this event's content (dropped, counted)
    │   └── EventFormatError     not a valid SyncEvent (also a ValueError: raised when one is made)
    │       └── UnsupportedEvent a valid envelope this region does not handle (counted, skipped)
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


class BrokerRefused(BrokerUnavailable):
    """The broker is reachable but refuses every event because of how it is set up (a table that
    is not a journal, a missing privilege, a read-only server): nothing is dropped, the events
    wait until an operator fixes the setting. ``reason`` is a short label for metrics."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class BrokerBusy(SyncError):
    """The relay has been inside one publish for too long (a stalled broker)."""


class EventRejected(SyncError):
    """The broker refuses an event for its content (it would refuse it on every retry)."""


class EventFormatError(SyncError, ValueError):
    """Not a valid SyncEvent: an inbound payload, or arguments given to ``SyncEvent(...)``
    (a ValueError too, so the guide's callers can catch what they know)."""


class UnsupportedEvent(EventFormatError):
    """A well-formed event this region does not handle (an unknown action or entity type):
    counted and skipped, as the contract asks of receivers."""


class LeadershipError(MemoriaError):
    """Talking to Kubernetes about leadership failed."""


class NotConfigured(LeadershipError):
    """This region has no Kubernetes credentials or no identity to act on."""
