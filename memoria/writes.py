"""The write path of every local change: create, update and delete a memory, and the decrement.

The HTTP API and the scheduler write through :class:`WriteService` only. Each write and the
sync event that tells the peers about it are committed in one store transaction (the outbox), so
a write is never shared half-way; the outbox relay (``memoria.sync.relay``) publishes the event
later, and :class:`WriteService` only wakes it. A memory is shared when sync is on and its
privacy (``y_coord``) lies inside this region's range; one that leaves the range is withdrawn
from the peers, without its content.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .metrics import RuntimeMetrics
from .privacy import PrivacyRange
from .settings import MemoriaSettings
from .store import DecrementOutcome, Memory, MemoryStore, memory_event
from .sync.events import SCHEDULE_NAMESPACE, Action, EntityType, SyncEvent
from .sync.payload import deletion_payload

# what an update may change, as the contract's ``changes`` names it
_CHANGEABLE = ("text", "namespace", "x_coord", "y_coord", "z_coord")


def _nothing() -> None:
    return None


class WriteService:
    """Local writes, each with its outbox event; satisfies the scheduler's
    :class:`~memoria.ports.DecrementTarget`."""

    def __init__(
        self,
        store: MemoryStore,
        settings: Callable[[], MemoriaSettings],
        metrics: RuntimeMetrics,
        *,
        written: Callable[[], None] = _nothing,
    ) -> None:
        self.store = store
        self._settings = settings  # read on every write: PATCH /settings applies live
        self.metrics = metrics
        self._written = written  # wakes the outbox relay

    @property
    def region(self) -> str:
        return self._settings().region

    # -- which events a write queues ---------------------------------------------------------

    def _share(self, memory: Memory) -> bool:
        sync = self._settings().sync
        return (
            sync.enabled
            and PrivacyRange(sync.privacy_floor, sync.privacy_ceiling).allows(memory.y_coord)
            and sync.shares_namespace(memory.namespace)
        )

    def _created(self, memory: Memory) -> SyncEvent | None:
        return memory_event(Action.CREATE, memory, self.region) if self._share(memory) else None

    def _updated(self, before: Memory, after: Memory) -> SyncEvent | None:
        if self._share(after):
            changes = {
                name: getattr(after, name)
                for name in _CHANGEABLE
                if getattr(after, name) != getattr(before, name)
            }
            return memory_event(Action.UPDATE, after, self.region, changes)
        if self._share(before):
            # it left the shareable range: peers must drop their copy; send no content
            return self._withdrawal(before, version=after.version)
        return None

    def _deleted(self, gone: Memory) -> SyncEvent | None:
        """``gone``: the memory as it was, with its tombstone's version."""
        return self._withdrawal(gone, version=gone.version) if self._share(gone) else None

    def _withdrawal(self, before: Memory, *, version: int) -> SyncEvent:
        """``memory.deleted`` for the copy the peers hold: its namespace and privacy are the
        ones they know (a reference receiver filters deletions by privacy too), no text."""
        return SyncEvent(
            action=Action.DELETE,
            entity_type=EntityType.MEMORY,
            namespace=before.namespace,
            entity_id=before.id,
            payload=deletion_payload(
                memory_id=before.id,
                namespace=before.namespace,
                privacy=before.y_coord,
                version=version,
            ),
            origin=self.region,
        )

    def decrement_event(self, date: str, token: int) -> SyncEvent | None:
        """The decrement for our peers. Nothing in it can pass for a memory with a reference
        receiver: not its action, entity type or namespace, and no ``entity_id`` or payload key
        a receiver that fell back on them would take for a memory id or content."""
        if not self._settings().sync.enabled:
            return None
        return SyncEvent(
            action=Action.DECREMENT,
            entity_type=EntityType.SCHEDULE,
            namespace=SCHEDULE_NAMESPACE,
            payload={"date": date, "token": token, "region": self.region},
            origin=self.region,
        )

    # -- writes ------------------------------------------------------------------------------

    def create_memory(
        self,
        *,
        text: str,
        y_coord: float,
        x_coord: float = 0.0,
        z_coord: float = 0.0,
        namespace: str = "default",
    ) -> Memory:
        memory = self.store.create_memory(
            namespace=namespace,
            text=text,
            x_coord=x_coord,
            y_coord=y_coord,
            z_coord=z_coord,
            origin=self.region,
            make_event=self._created,
        )
        self.metrics.writes.labels("create").inc()
        self._written()
        return memory

    def update_memory(self, memory_id: str, changes: dict[str, Any]) -> Memory:
        memory = self.store.update_memory(
            memory_id, changes, origin=self.region, make_event=self._updated
        )
        self.metrics.writes.labels("update").inc()
        self._written()
        return memory

    def delete_memory(self, memory_id: str) -> Memory:
        memory = self.store.delete_memory(memory_id, origin=self.region, make_event=self._deleted)
        self.metrics.writes.labels("delete").inc()
        self._written()
        return memory

    # -- the decrement (DecrementTarget) -----------------------------------------------------

    def run_decrement(self, date: str, token: int) -> DecrementOutcome:
        outcome = self.store.run_decrement(
            date,
            token=token,
            region=self.region,
            make_event=lambda d: self.decrement_event(d, token),
        )
        self.metrics.decrements.labels(outcome.reason).inc()
        self._written()
        return outcome

    def last_decrement_date(self) -> str | None:
        return self.store.metadata().get("last_decrement_date") or None

    def raise_fencing_token(self, token: int) -> None:
        self.store.raise_fencing_token(token)
