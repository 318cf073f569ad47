"""The SyncEvent envelope: the guide's contract as the reference puts it on the wire."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from memoria.errors import EventFormatError, UnsupportedEvent
from memoria.sync.events import Action, EntityType, SyncEvent, decode

GUIDE_EVENT = {
    "action": "memory.created",
    "entity_type": "memory",
    "namespace": "default",
    "entity_id": "m1",
    "payload": {"text": "hello", "y_coord": 0},
    "origin": "region-a",
    "created_at": "2026-11-26T10:00:00+00:00",
}


def test_the_guides_call_works_without_origin() -> None:
    event = SyncEvent(
        action="memory.created",
        entity_type="memory",
        namespace="default",
        entity_id="m1",
        payload={"text": "hi"},
    )
    assert event.action is Action.CREATE and event.entity_type is EntityType.MEMORY
    assert event.origin is None
    wire = json.loads(event.to_json())
    assert "origin" not in wire  # the reference leaves out what is not set
    assert wire["action"] == "memory.created"


def test_wire_keys_are_the_references_then_ours() -> None:
    event = SyncEvent(Action.UPDATE, EntityType.MEMORY, "ns", "id1", {"a": 1}, "r")
    wire = json.loads(event.to_json())
    assert list(wire) == [
        "action",
        "entity_type",
        "namespace",
        "created_at",
        "entity_id",
        "payload",
        "origin",
        "event_id",
    ]
    assert dt.datetime.fromisoformat(wire["created_at"]).utcoffset() == dt.timedelta(0)
    assert wire["created_at"].endswith("+00:00")  # ISO 8601 with its offset, as the reference


def test_round_trip_keeps_every_field() -> None:
    event = SyncEvent(Action.UPDATE, EntityType.MEMORY, "ns", "id1", {"a": 1}, "r")
    assert SyncEvent.from_json(event.to_json()) == event


@pytest.mark.parametrize(
    ("kwargs", "needles"),
    [
        ({"action": "create"}, ["action", "memory.created", "memory.deleted"]),
        ({"action": "memory.exploded"}, ["action", "memory.created"]),
        ({"entity_type": "galaxy"}, ["entity_type", "memory", "thread"]),
        ({"namespace": ""}, ["namespace"]),
        ({"payload": ["not", "a", "dict"]}, ["payload"]),
        ({"origin": 5}, ["origin"]),
    ],
)
def test_a_bad_event_is_refused_when_made(kwargs: dict[str, object], needles: list[str]) -> None:
    arguments: dict[str, object] = {
        "action": "memory.created",
        "entity_type": "memory",
        "namespace": "default",
        "entity_id": "m1",
        "payload": {},
        **kwargs,
    }
    with pytest.raises(ValueError, match=needles[0]) as err:  # EventFormatError is a ValueError
        SyncEvent(**arguments)  # type: ignore[arg-type]
    assert isinstance(err.value, EventFormatError)
    assert all(n in str(err.value) for n in needles), str(err.value)


def test_an_event_without_id_gets_a_stable_one_from_its_content() -> None:
    first = SyncEvent.from_dict(GUIDE_EVENT)
    reordered = json.loads(json.dumps(dict(reversed(list(GUIDE_EVENT.items())))))
    respaced = json.dumps(GUIDE_EVENT, indent=4)
    assert first.event_id == SyncEvent.from_dict(reordered).event_id
    assert first.event_id == SyncEvent.from_json(respaced).event_id
    assert first.event_id == SyncEvent.from_dict({**GUIDE_EVENT, "journal_id": 9}).event_id
    later = SyncEvent.from_dict({**GUIDE_EVENT, "created_at": "2026-11-26T10:00:01+00:00"})
    assert later.event_id != first.event_id  # a second write of the same text is another event


def test_earlier_dialect_still_reads() -> None:
    """Journals written by earlier versions of this runtime still replay after an upgrade."""
    for old, new in [
        ("create", Action.CREATE),
        ("update", Action.UPDATE),
        ("delete", Action.DELETE),
    ]:
        assert SyncEvent.from_dict({**GUIDE_EVENT, "action": old}).action is new
    decrement = {**GUIDE_EVENT, "action": "decrement", "entity_type": "schedule"}
    assert SyncEvent.from_dict(decrement).action is Action.DECREMENT


def test_parsing_is_as_lenient_as_the_reference_receiver() -> None:
    lenient = SyncEvent.from_dict(
        {
            "action": "memory.created",
            "namespace": "default",
            "payload": "not an object",
            "created_at": "noon",
            "origin": "",
        }
    )
    assert lenient.payload == {}  # a non-object payload becomes {}
    age = dt.datetime.now(dt.UTC) - lenient.created_at
    assert dt.timedelta(0) <= age < dt.timedelta(seconds=5)  # a bad created_at becomes now
    assert lenient.origin is None and lenient.entity_id is None
    assert lenient.entity_type is EntityType.MEMORY  # implied by the action


@pytest.mark.parametrize(
    ("raw", "needle", "unsupported"),
    [
        ("{", "not JSON", False),
        ("[]", "expected a JSON object", False),
        (json.dumps({**GUIDE_EVENT, "action": "explode"}), "unknown action 'explode'", True),
        (json.dumps({**GUIDE_EVENT, "entity_type": "x"}), "unknown entity_type", True),
        (json.dumps({**GUIDE_EVENT, "action": 3}), "action must be a string", False),
        (
            json.dumps({k: v for k, v in GUIDE_EVENT.items() if k != "namespace"}),
            "missing fields: namespace",
            False,
        ),
        (json.dumps({**GUIDE_EVENT, "namespace": ""}), "namespace", False),
        (json.dumps({**GUIDE_EVENT, "event_id": 7}), "event_id", False),
    ],
)
def test_what_cannot_be_read_names_the_problem(raw: str, needle: str, unsupported: bool) -> None:
    with pytest.raises(EventFormatError) as err:
        SyncEvent.from_json(raw)
    assert needle in str(err.value)
    assert isinstance(err.value, UnsupportedEvent) is unsupported
    delivery = decode(raw, "7")
    assert delivery.event is None and delivery.position == "7"
    assert delivery.reason == ("unsupported" if unsupported else "malformed")


def test_thread_events_parse_and_are_left_to_the_applier() -> None:
    event = SyncEvent.from_dict(
        {**GUIDE_EVENT, "action": "thread.updated", "entity_type": "thread"}
    )
    assert event.action is Action.THREAD_UPDATE and event.entity_type is EntityType.THREAD


def test_content_key_ignores_how_jsonb_respells_numbers() -> None:
    """A reference event's NOTIFY copy and its journal row (re-spelt by JSONB: 1e16 becomes
    10000000000000000, -0.0 becomes 0.0) get one key, so it is applied once."""
    from memoria.sync.events import content_key

    sent = {"action": "memory.created", "payload": {"a": 1e16, "b": -0.0, "c": 1e2, "d": 0.7}}
    stored = {"action": "memory.created", "payload": {"a": 10**16, "b": 0.0, "c": 100, "d": 0.7}}
    assert content_key(sent) == content_key(stored)
    assert content_key(sent) != content_key({**sent, "payload": {**sent["payload"], "d": 0.8}})
