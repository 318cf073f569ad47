"""The ``SyncEvent`` wire contract shared by every backend.

JSON fields are the guide's (``action``, ``entity_type``, ``namespace``, ``entity_id``,
``payload``, ``origin``, ``created_at``) plus ``event_id``, which makes re-deliveries detectable.
A peer that only knows the guide's fields still reads our events; an event without an id (from
such a peer) gets a deterministic one derived from its content, so its duplicates are detectable
too.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

import orjson

from ..errors import EventFormatError


class Action(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"
    DECREMENT = "decrement"  # the leader's daily decrement, applied once per date by peers


class EntityType(StrEnum):
    MEMORY = "memory"
    SCHEDULE = "schedule"


_E = TypeVar("_E", bound=StrEnum)


def _member(enum: type[_E], data: dict[str, Any], field: str) -> _E:
    try:
        return enum(data[field])
    except ValueError:
        allowed = ", ".join(m.value for m in enum)
        raise EventFormatError(f"unknown {field} {data[field]!r} (allowed: {allowed})") from None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True, slots=True)
class SyncEvent:
    action: Action
    entity_type: EntityType
    namespace: str
    entity_id: str
    payload: dict[str, Any]
    origin: str
    created_at: dt.datetime = field(default_factory=_now)
    event_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def to_dict(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "action": self.action.value,
            "entity_type": self.entity_type.value,
            "namespace": self.namespace,
            "entity_id": self.entity_id,
            "payload": self.payload,
            "origin": self.origin,
            "created_at": self.created_at.isoformat(),
        }

    def to_json(self) -> str:
        return orjson.dumps(self.to_dict()).decode()

    @classmethod
    def from_json(cls, raw: str | bytes) -> SyncEvent:
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise EventFormatError(f"not JSON: {exc}") from None
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Any) -> SyncEvent:
        if not isinstance(data, dict):
            raise EventFormatError(f"expected a JSON object, got {type(data).__name__}")
        missing = [
            k
            for k in ("action", "entity_type", "namespace", "entity_id", "payload", "origin")
            if k not in data
        ]
        if missing:
            raise EventFormatError(f"missing fields: {', '.join(missing)}")
        action = _member(Action, data, "action")
        entity_type = _member(EntityType, data, "entity_type")
        for name in ("namespace", "entity_id", "origin"):
            if not isinstance(data[name], str) or not data[name]:
                raise EventFormatError(f"{name} must be a non-empty string")
        if not isinstance(data["payload"], dict):
            raise EventFormatError("payload must be a JSON object")
        created_raw = data.get("created_at")
        try:
            created = dt.datetime.fromisoformat(created_raw) if created_raw else _now()
        except (TypeError, ValueError):
            raise EventFormatError(f"created_at is not an ISO-8601 time: {created_raw!r}") from None
        if created.tzinfo is None:
            created = created.replace(tzinfo=dt.UTC)
        event_id = data.get("event_id")
        if event_id is None:
            digest = hashlib.sha256(
                json.dumps(data, sort_keys=True, default=str).encode()
            ).hexdigest()
            event_id = digest[:32]
        if not isinstance(event_id, str) or not 1 <= len(event_id) <= 64:
            raise EventFormatError("event_id must be a string of 1-64 characters")
        return cls(
            action=action,
            entity_type=entity_type,
            namespace=data["namespace"],
            entity_id=data["entity_id"],
            payload=data["payload"],
            origin=data["origin"],
            created_at=created,
            event_id=event_id,
        )


@dataclass(frozen=True, slots=True)
class Delivery:
    """An event as a subscription hands it over: with its position in the backend's journal.

    ``position`` is what a subscriber stores (with the applied event, in one transaction) to
    resume exactly after it; ``None`` for transports without a journal.
    """

    event: SyncEvent | None  # None: the raw payload was malformed (see ``error``)
    position: str | None
    error: str | None = None
    raw: str | None = None
