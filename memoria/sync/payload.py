"""The payload of memory events: built as the reference storage service builds it, read as the
reference receiver reads it.

Outbound, a ``memory.created`` or ``memory.updated`` payload carries ``memory_id``,
``namespace``, ``privacy`` (the ``y_coord``), a flat ``snapshot`` and a ``replica`` whose
``record`` a reference receiver with realtime replication upserts; updates add ``changes``.
Ours travel as extra keys: ``version`` and ``updated_at`` (last-writer-wins) and ``x_as_of``
(which decrements ``x_coord`` already reflects). A ``memory.deleted`` payload has no text: it
also serves as the withdrawal of a memory that left the privacy range.

Inbound, both shapes are read: a payload with any of ``snapshot``, ``replica``, ``changes``,
``privacy`` is structured, anything else is taken whole as the snapshot (flat; earlier versions
of this runtime sent flat payloads). Privacy is ``privacy``, else ``snapshot.y_coord``, else
``replica.record.y_coord``: the reference's order.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import Any

from ..errors import EventFormatError
from .events import SyncEvent, read_time

#: the reference's table name for what we store (it also has ``short_term``)
TABLE = "long_term"
_STRUCTURED_KEYS = ("snapshot", "replica", "changes", "privacy")


def memory_payload(
    *,
    memory_id: str,
    namespace: str,
    text: str,
    x_coord: float,
    y_coord: float,
    z_coord: float,
    created_at: str,
    updated_at: str,
    version: int,
    x_as_of: str,
    changes: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The payload of ``memory.created`` / ``memory.updated``."""
    coords = {"x_coord": x_coord, "y_coord": y_coord, "z_coord": z_coord}
    payload: dict[str, Any] = {
        "snapshot": {
            "memory_id": memory_id,
            "text": text,
            "timestamp": created_at,
            **coords,
            "symbolic_anchors": [],
            "namespace": namespace,
            "table": TABLE,
        },
        "replica": {
            "table": TABLE,
            "record": {
                "memory_id": memory_id,
                "processed_data": {"text": text},
                **coords,
                "symbolic_anchors": [],
                "namespace": namespace,
                "timestamp": created_at,
                "created_at": created_at,
            },
        },
    }
    if changes is not None:
        payload["changes"] = changes
    payload.update(
        privacy=y_coord,
        memory_id=memory_id,
        namespace=namespace,
        version=version,
        updated_at=updated_at,
        x_as_of=x_as_of,
    )
    return payload


def deletion_payload(
    *, memory_id: str, namespace: str, privacy: float, version: int
) -> dict[str, Any]:
    """The payload of ``memory.deleted``: no text. ``privacy`` is the value the peers hold (a
    reference receiver filters deletions by it too, so a withdrawal must carry the old one)."""
    return {
        "snapshot": {
            "memory_id": memory_id,
            "y_coord": privacy,
            "namespace": namespace,
            "table": TABLE,
        },
        "privacy": privacy,
        "memory_id": memory_id,
        "namespace": namespace,
        "version": version,
    }


# -- reading ------------------------------------------------------------------------------------


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def parts(payload: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(snapshot, replica record) of a payload, by the reference's rule for flat payloads."""
    for key in _STRUCTURED_KEYS:
        if key in payload:
            replica = payload.get("replica")
            record = replica.get("record") if isinstance(replica, dict) else None
            return _object(payload.get("snapshot")), _object(record)
    return payload, {}


def _first(*candidates: Any) -> Any:
    for candidate in candidates:
        if candidate is not None:
            return candidate
    return None


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise EventFormatError(f"{name} must be a number")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise EventFormatError(f"{name} must be a finite number")
    return number


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise EventFormatError(f"{name} must be a string")
    if "\x00" in value:
        raise EventFormatError(f"{name} must not contain NUL characters")
    return value


# each reader takes the (snapshot, record) of the payload when its caller has them already

Parts = tuple[dict[str, Any], dict[str, Any]]


def privacy_of(payload: dict[str, Any], split: Parts | None = None) -> float | None:
    """The privacy a range is compared with, or None if the payload does not say."""
    snapshot, record = split or parts(payload)
    value = _first(payload.get("privacy"), snapshot.get("y_coord"), record.get("y_coord"))
    return None if value is None else _number(value, "payload.privacy")


def memory_id_of(event: SyncEvent, split: Parts | None = None) -> str:
    """Which memory an event is about: ``payload.memory_id``, else the snapshot's or the
    record's, else ``entity_id`` (a reference capture shows they can differ; the payload's is
    the one its receiver stores)."""
    snapshot, record = split or parts(event.payload)
    value = _first(
        event.payload.get("memory_id"),
        snapshot.get("memory_id"),
        record.get("memory_id"),
        snapshot.get("id"),  # flat payloads of earlier versions of this runtime
        event.entity_id,
    )
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value or "\x00" in value:
        raise EventFormatError("the event names no memory (payload.memory_id or entity_id)")
    return value


def version_of(event: SyncEvent, split: Parts | None = None) -> int:
    """Our ``version`` when the sender is one of ours; for a reference sender, which has no
    versions, the time it made the event in microseconds, so its writes are ordered by when
    they were made (as ours are: our versions are microseconds of a hybrid clock).

    The time is the one the event says, never the time of receipt: ``created_at`` as sent,
    else the content's own timestamps, else 1 (older than any timed write). So one event gets
    one version in every region and however often it is heard.
    """
    snapshot, record = split or parts(event.payload)
    version = _first(event.payload.get("version"), snapshot.get("version"))
    if version is None:
        sent = event.sent_at or _content_time(event.payload, snapshot, record)
        return max(1, int(sent.timestamp() * 1_000_000)) if sent is not None else 1
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise EventFormatError("payload.version must be a positive integer")
    return version


def _content_time(
    payload: dict[str, Any], snapshot: dict[str, Any], record: dict[str, Any]
) -> dt.datetime | None:
    for raw in (
        payload.get("updated_at"),
        snapshot.get("updated_at"),
        record.get("updated_at"),
        snapshot.get("timestamp"),
        record.get("created_at"),
        record.get("timestamp"),
    ):
        found = read_time(raw)
        if found is not None:
            return found
    return None


@dataclass(frozen=True, slots=True)
class MemoryFacts:
    """What an inbound ``memory.created``/``memory.updated`` says about its memory."""

    memory_id: str
    text: str
    x_coord: float
    y_coord: float
    z_coord: float
    created_at: str | None
    updated_at: str | None
    version: int
    x_as_of: str | None


def read_memory(event: SyncEvent) -> MemoryFacts:
    """The memory an inbound create/update carries; EventFormatError if it cannot be read."""
    payload = event.payload
    split = snapshot, record = parts(payload)
    processed = _object(record.get("processed_data"))
    text = _first(snapshot.get("text"), processed.get("text"), record.get("text"))
    if text is None:
        raise EventFormatError("payload has no text (snapshot.text or replica.record)")
    y = privacy_of(payload, split)
    if y is None:
        raise EventFormatError("payload has no privacy (privacy or y_coord)")

    def coordinate(name: str) -> float:
        value = snapshot.get(name)
        if value is None:
            value = record.get(name)
        return 0.0 if value is None else _number(value, f"payload.{name}")

    created = _first(
        record.get("created_at"), snapshot.get("created_at"), snapshot.get("timestamp")
    )
    updated = _first(payload.get("updated_at"), snapshot.get("updated_at"))
    as_of = _first(payload.get("x_as_of"), snapshot.get("x_as_of"))
    return MemoryFacts(
        memory_id=memory_id_of(event, split),
        text=_text(text, "payload text"),
        x_coord=coordinate("x_coord"),
        y_coord=y,
        z_coord=coordinate("z_coord"),
        created_at=str(created) if created is not None else None,
        updated_at=str(updated) if updated is not None else None,
        version=version_of(event, split),
        x_as_of=as_of if isinstance(as_of, str) and len(as_of) <= 10 else None,
    )
