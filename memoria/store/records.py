"""The values the store takes and hands back: memories, outbox rows, inbound operations and
decrement outcomes, plus how a memory maps to its table row and to its sync event."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ..sync.events import Action, EntityType, SyncEvent
from ..sync.payload import memory_payload

#: x_as_of of a peer's memory whose event did not carry one
UNKNOWN_AS_OF = "?"


def utcnow() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True, slots=True)
class Memory:
    id: str
    namespace: str
    text: str
    x_coord: float
    y_coord: float
    z_coord: float
    created_at: str
    updated_at: str
    version: int
    origin: str
    # the last decrement date that x_coord already reflects; lets a peer whose store has seen
    # more (or fewer) decrements adjust x_coord instead of undoing or repeating one
    x_as_of: str = ""

    def to_payload(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "namespace": self.namespace,
            "text": self.text,
            "x_coord": self.x_coord,
            "y_coord": self.y_coord,
            "z_coord": self.z_coord,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "version": self.version,
            "origin": self.origin,
            "x_as_of": self.x_as_of,
        }


# the columns of ``memories`` that make a Memory, in its fields' order
MEMORY_COLUMNS = (
    "id, namespace, text, x_coord, y_coord, z_coord, created_at, updated_at, version, origin, "
    "x_as_of"
)
MEMORY_MARKS = ", ".join("?" * 11)


def memory_from_row(row: Sequence[Any]) -> Memory:
    return Memory(
        id=row[0],
        namespace=row[1],
        text=row[2],
        x_coord=float(row[3]),
        y_coord=float(row[4]),
        z_coord=float(row[5]),
        created_at=row[6],
        updated_at=row[7],
        version=int(row[8]),
        origin=row[9],
        x_as_of=row[10],
    )


def memory_event(
    action: Action, memory: Memory, origin: str, changes: dict[str, Any] | None = None
) -> SyncEvent:
    """The ``memory.created``/``memory.updated`` event of a local write, in the contract's
    structured payload (``changes``: what an update changed)."""
    return SyncEvent(
        action=action,
        entity_type=EntityType.MEMORY,
        namespace=memory.namespace,
        entity_id=memory.id,
        payload=memory_payload(
            memory_id=memory.id,
            namespace=memory.namespace,
            text=memory.text,
            x_coord=memory.x_coord,
            y_coord=memory.y_coord,
            z_coord=memory.z_coord,
            created_at=memory.created_at,
            updated_at=memory.updated_at,
            version=memory.version,
            x_as_of=memory.x_as_of,
            changes=changes,
        ),
        origin=origin,
    )


EventFactory = Callable[[Memory], SyncEvent | None]


@dataclass(frozen=True, slots=True)
class OutboxRow:
    seq: int
    event_id: str
    body: str  # the encoded SyncEvent
    y_coord: float | None  # privacy of the content it carries, if any


DecrementReason = Literal["ran", "already", "stale", "invalid"]


@dataclass(frozen=True, slots=True)
class DecrementOutcome:
    """What a decrement attempt did: ``ran`` or why not (``already`` done for that date or a
    later one, ``stale`` fencing token, ``invalid`` date in a peer's event)."""

    date: str
    ran: bool
    reason: DecrementReason
    rows: int = 0
    last_by: str | None = None


InboundKind = Literal["upsert", "withdraw", "decrement", "skip", "defer"]


@dataclass(slots=True)
class InboundOp:
    """One inbound event prepared by the sync coordinator for :meth:`MemoryStore.apply_inbound`.

    ``kind``: ``upsert`` (store ``memory``), ``withdraw`` (drop our copy of ``memory_id`` up to
    ``version``: the memory left our privacy range or was deleted at its origin), ``decrement``
    (apply the leader's decrement once per date), ``skip`` (only remember the id: own origin,
    privacy, malformed) or ``defer`` (keep a decrement in ``sync_deferred``, not marked seen,
    until this region's Lease allows its token).
    """

    event_id: str
    kind: InboundKind
    event: SyncEvent | None = None
    memory: Memory | None = None
    memory_id: str | None = None  # withdraw: which memory
    version: int | None = None  # withdraw: the version that removes it


@dataclass(frozen=True, slots=True)
class InboundResult:
    applied: int = 0
    duplicates: int = 0
    skipped: int = 0
    stale: int = 0
    outcomes: list[DecrementOutcome] = field(default_factory=list)
    refused: int = 0  # deletes of a memory another region wrote last
