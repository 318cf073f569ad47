"""The ``SyncEvent`` envelope: the guide's contract, as the reference implementation puts it on
the wire (``shared/reference/syncevent-wire.md``), plus our extensions as extra keys.

On the wire an event is one JSON object::

    {"action": "memory.created", "entity_type": "memory", "namespace": "default",
     "created_at": "2026-11-29T03:16:36.011489+00:00", "entity_id": "...",
     "payload": {...}, "origin": "region-a", "event_id": "..."}

``event_id`` is ours: it makes re-deliveries detectable. A reference receiver ignores it, as it
ignores every key it does not know. Parsing is as lenient as the reference receiver's: a missing
or bad ``created_at`` becomes "now", a payload that is not an object becomes ``{}``, ``origin``
and ``entity_id`` are optional. An event without ``event_id`` (a reference sender's) gets one
derived from its content, so the same event heard twice (on the channel and from the journal,
or redelivered) is still applied once.

Made in Python, an event is checked at once: ``SyncEvent(action="explode", ...)`` raises
:class:`~memoria.errors.EventFormatError` (a ValueError) naming the field and the values allowed,
instead of failing later inside ``publish()``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal, TypeVar

import orjson

from ..errors import EventFormatError, UnsupportedEvent
from .trust import MAX_EVENT_BYTES, oversized


class Action(StrEnum):
    CREATE = "memory.created"
    UPDATE = "memory.updated"
    DELETE = "memory.deleted"
    THREAD_UPDATE = "thread.updated"  # the reference's; received, counted and skipped
    # ours: the leader's daily decrement, applied once per date by our peers. Neither its
    # action, its entity type nor its namespace is a memory's, so a reference receiver, which
    # handles memory events by action within its namespace, ignores it.
    DECREMENT = "schedule.decremented"


class EntityType(StrEnum):
    MEMORY = "memory"
    THREAD = "thread"
    SCHEDULE = "schedule"


#: the namespace of schedule events: no memory lives there, so reference receivers drop them
SCHEDULE_NAMESPACE = "_schedule"

# what earlier versions of this runtime sent: journals written by them still replay
_LEGACY_ACTIONS = {
    "create": Action.CREATE,
    "update": Action.UPDATE,
    "delete": Action.DELETE,
    "decrement": Action.DECREMENT,
}
_E = TypeVar("_E", bound=StrEnum)
# value -> member: a dict lookup, several times cheaper than calling the enum, on the hot path
_MEMBERS: dict[type[StrEnum], dict[Any, Any]] = {
    Action: {m.value: m for m in Action},
    EntityType: {m.value: m for m in EntityType},
}


def _member(enum: type[_E], value: Any, name: str, error: type[EventFormatError]) -> _E:
    try:
        member: _E | None = _MEMBERS[enum].get(value)
    except TypeError:  # unhashable
        member = None
    if member is None:
        allowed = ", ".join(m.value for m in enum)
        raise error(f"unknown {name} {value!r} (allowed: {allowed})") from None
    return member


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _optional_text(value: Any, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise EventFormatError(f"{name} must be a string or None, not {type(value).__name__}")
    return value or None


@dataclass(frozen=True, slots=True, init=False)
class SyncEvent:
    """One sync event. Arguments are the guide's; ``origin``, ``entity_id`` and ``payload`` are
    optional, and ``action``/``entity_type`` may be given as strings."""

    action: Action
    entity_type: EntityType
    namespace: str
    entity_id: str | None
    payload: dict[str, Any]
    origin: str | None
    created_at: dt.datetime
    event_id: str
    #: ``created_at`` as the sender gave it; None when it was missing or unreadable (then
    #: ``created_at`` is the time of receipt, which must not order anything)
    sent_at: dt.datetime | None
    #: a received event's ``sig`` and the digest of what it says (see :mod:`.signing`)
    signature: str | None
    digest: bytes | None

    def __init__(  # noqa: PLR0917 - the contract's order, which callers use positionally
        self,
        action: Action | str,
        entity_type: EntityType | str = EntityType.MEMORY,
        namespace: str = "default",
        entity_id: str | None = None,
        payload: dict[str, Any] | None = None,
        origin: str | None = None,
        created_at: dt.datetime | None = None,
        event_id: str | None = None,
    ) -> None:
        if not isinstance(namespace, str) or not namespace:
            raise EventFormatError("namespace must be a non-empty string")
        if payload is not None and not isinstance(payload, dict):
            raise EventFormatError(f"payload must be a dict, not {type(payload).__name__}")
        if created_at is not None and not isinstance(created_at, dt.datetime):
            raise EventFormatError("created_at must be a datetime")
        event_id = uuid.uuid4().hex if event_id is None else event_id
        if not isinstance(event_id, str) or not 1 <= len(event_id) <= 64:
            raise EventFormatError("event_id must be a string of 1-64 characters")
        if created_at is None:
            created_at = _now()
        elif created_at.tzinfo is None:
            created_at = created_at.replace(tzinfo=dt.UTC)
        if payload:
            try:  # checked here, not in publish(): a payload must be JSON to travel
                orjson.dumps(payload)
            except TypeError as exc:
                raise EventFormatError(f"payload is not JSON: {exc}") from None
        init = object.__setattr__
        init(self, "action", _member(Action, action, "action", EventFormatError))
        init(self, "entity_type", _member(EntityType, entity_type, "entity_type", EventFormatError))
        init(self, "namespace", namespace)
        init(self, "entity_id", _optional_text(entity_id, "entity_id"))
        init(self, "payload", {} if payload is None else payload)
        init(self, "origin", _optional_text(origin, "origin"))
        init(self, "created_at", created_at)
        init(self, "event_id", event_id)
        init(self, "sent_at", created_at)
        init(self, "signature", None)
        init(self, "digest", None)

    def to_dict(self) -> dict[str, Any]:
        """The wire object: the reference's keys in its order, then ours. Keys the reference
        leaves out when they have no value are left out here too."""
        data: dict[str, Any] = {
            "action": self.action.value,
            "entity_type": self.entity_type.value,
            "namespace": self.namespace,
            "created_at": self.created_at,
        }
        if self.entity_id is not None:
            data["entity_id"] = self.entity_id
        if self.payload:
            data["payload"] = self.payload
        if self.origin is not None:
            data["origin"] = self.origin
        data["event_id"] = self.event_id
        return data

    def to_json(self) -> str:
        # orjson writes an aware datetime as ISO 8601 with its offset, as the reference does
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
        """Read a wire object as leniently as the reference receiver does.

        Raises EventFormatError when it cannot be an event at all, UnsupportedEvent when it is
        one this region does not handle (an unknown action or entity type).
        """
        if not isinstance(data, dict):
            raise EventFormatError(f"expected a JSON object, got {type(data).__name__}")
        missing = [k for k in ("action", "namespace") if k not in data]
        if missing:
            raise EventFormatError(f"missing fields: {', '.join(missing)}")
        raw_action = data["action"]
        if not isinstance(raw_action, str):
            raise EventFormatError("action must be a string")
        action = _LEGACY_ACTIONS.get(raw_action) or _member(
            Action, raw_action, "action", UnsupportedEvent
        )
        raw_type = data.get("entity_type") or action.value.partition(".")[0]
        entity_type = _member(EntityType, raw_type, "entity_type", UnsupportedEvent)
        namespace = data["namespace"]
        if not isinstance(namespace, str) or not namespace:
            raise EventFormatError("namespace must be a non-empty string")
        entity_id = data.get("entity_id")
        if isinstance(entity_id, int) and not isinstance(entity_id, bool):
            entity_id = str(entity_id)
        payload = data.get("payload")
        origin = data.get("origin")
        event_id = data.get("event_id")
        if event_id is None:
            event_id = content_key(data)
        if not isinstance(event_id, str) or not 1 <= len(event_id) <= 64:
            raise EventFormatError("event_id must be a string of 1-64 characters")
        # every field is checked above: skip __init__'s checks (this runs per inbound event)
        event = object.__new__(cls)
        init = object.__setattr__
        init(event, "action", action)
        init(event, "entity_type", entity_type)
        init(event, "namespace", namespace)
        init(event, "entity_id", entity_id if isinstance(entity_id, str) and entity_id else None)
        init(event, "payload", payload if isinstance(payload, dict) else {})
        init(event, "origin", origin if isinstance(origin, str) and origin else None)
        sent_at = read_time(data.get("created_at"))
        init(event, "created_at", sent_at or _now())  # the reference's rule: else "now"
        init(event, "event_id", event_id)
        init(event, "sent_at", sent_at)
        signature = data.get("sig")
        if isinstance(signature, str):
            init(event, "signature", signature[:128])
            init(event, "digest", content_digest(data))
        else:
            init(event, "signature", None)
            init(event, "digest", None)
        return event


_SIGNED = ("action", "entity_type", "namespace", "entity_id", "created_at", "payload", "origin")


def content_digest(data: dict[str, Any]) -> bytes:
    """SHA-256 of what a wire object says, the digest a signature covers (see
    :mod:`.signing`): envelope, payload and ``event_id``; ``sig`` and transport markers
    aside."""
    content = {k: data.get(k) for k in _SIGNED}
    content["event_id"] = data.get("event_id")
    return hashlib.sha256(canonical(content)).digest()


def read_time(raw: Any) -> dt.datetime | None:
    """An ISO 8601 time as a peer sent it (UTC when it names no offset), None if unreadable."""
    if not isinstance(raw, str) or len(raw) > 64:
        return None
    try:
        created = dt.datetime.fromisoformat(raw)
    except ValueError:
        return None
    return created if created.tzinfo else created.replace(tzinfo=dt.UTC)


def content_key(data: dict[str, Any]) -> str:
    """A stable id for an event that has none: a hash of what it says (origin, action, entity,
    namespace, ``created_at`` as sent, payload), key order and spacing aside. The same event
    read from a NOTIFY and from the journal row (which PostgreSQL re-spells as JSONB) gets the
    same key; transport markers such as ``journal_id`` are not part of it."""
    content = {k: data.get(k) for k in ("origin", "action", "entity_type", "namespace")}
    content["entity_id"] = data.get("entity_id")
    content["created_at"] = data.get("created_at")
    content["payload"] = data.get("payload")
    return "c" + hashlib.sha256(canonical(content)).hexdigest()[:31]


def canonical(content: dict[str, Any]) -> bytes:
    """``content`` as bytes that do not depend on how it was spelled: keys sorted, no spaces,
    numbers as PostgreSQL's JSONB spells them back."""
    content = _numbers_as_jsonb(content)
    try:
        return orjson.dumps(content, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # an integer beyond 64 bits, say: the slower codec takes anything JSON
        return json.dumps(content, sort_keys=True, separators=(",", ":")).encode()


def _numbers_as_jsonb(value: Any) -> Any:
    """Numbers spelled as PostgreSQL's JSONB spells them back: an integral float (``1e16``,
    ``2.0``) as an integer, ``-0.0`` as ``0``; so the NOTIFY copy and the journal copy of one
    event hash alike."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _numbers_as_jsonb(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers_as_jsonb(v) for v in value]
    return value


#: why a Delivery has no event: ``malformed`` and ``unsupported`` are counted as such;
#: ``foreign`` is another channel's journal row, which only moves the position
SkipReason = Literal["malformed", "unsupported", "foreign", "oversized"]


@dataclass(frozen=True, slots=True)
class Delivery:
    """An event as a subscription hands it over: with its position in the backend's journal.

    ``position`` is what a subscriber stores (with the applied event, in one transaction) to
    resume exactly after it; ``None`` for what did not come from a journal (a reference
    sender's PUBLISH or NOTIFY), which never moves the subscriber's cursor.
    """

    event: SyncEvent | None  # None: not applicable (see ``error`` and ``reason``)
    position: str | None
    error: str | None = None
    raw: str | None = None
    reason: SkipReason = "malformed"


def decode(raw: str | bytes, position: str | None) -> Delivery:
    """A wire payload as a Delivery: the event, or why it is skipped. A payload over
    :data:`~memoria.sync.trust.MAX_EVENT_BYTES` is not even parsed."""
    if oversized(raw):
        return Delivery(None, position, f"over {MAX_EVENT_BYTES} bytes", None, "oversized")
    try:
        return Delivery(SyncEvent.from_json(raw), position)
    except UnsupportedEvent as exc:
        return Delivery(None, position, str(exc), _excerpt(raw), "unsupported")
    except EventFormatError as exc:
        return Delivery(None, position, str(exc), _excerpt(raw))


def _excerpt(raw: str | bytes) -> str:
    text = raw if isinstance(raw, str) else raw.decode(errors="replace")
    return text[:200]
