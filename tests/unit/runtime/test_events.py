"""The SyncEvent wire contract."""

from __future__ import annotations

import json

import pytest

from memoria.errors import EventFormatError
from memoria.sync.events import Action, EntityType, SyncEvent

GUIDE_EVENT = {
    "action": "create",
    "entity_type": "memory",
    "namespace": "default",
    "entity_id": "m1",
    "payload": {"text": "hello", "y_coord": 0},
    "origin": "region-a",
    "created_at": "2026-11-26T10:00:00+00:00",
}


def test_round_trip_keeps_every_field() -> None:
    event = SyncEvent(Action.UPDATE, EntityType.MEMORY, "ns", "id1", {"a": 1}, "r")
    again = SyncEvent.from_json(event.to_json())
    assert again == event
    assert set(json.loads(event.to_json())) == {*GUIDE_EVENT, "event_id"}


def test_guide_event_without_id_gets_a_stable_one() -> None:
    first = SyncEvent.from_dict(GUIDE_EVENT)
    second = SyncEvent.from_dict(dict(GUIDE_EVENT))
    assert first.event_id == second.event_id  # duplicates of it are detectable
    assert first.action is Action.CREATE


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ("{", "not JSON"),
        ("[]", "expected a JSON object"),
        (json.dumps({**GUIDE_EVENT, "action": "explode"}), "unknown action 'explode'"),
        (json.dumps({**GUIDE_EVENT, "entity_type": "x"}), "unknown entity_type"),
        (json.dumps({**GUIDE_EVENT, "payload": []}), "payload must be a JSON object"),
        (json.dumps({**GUIDE_EVENT, "origin": ""}), "origin must be a non-empty string"),
        (
            json.dumps({k: v for k, v in GUIDE_EVENT.items() if k != "namespace"}),
            "missing fields: namespace",
        ),
        (json.dumps({**GUIDE_EVENT, "created_at": "noon"}), "created_at"),
        (json.dumps({**GUIDE_EVENT, "event_id": 7}), "event_id"),
    ],
)
def test_malformed_events_name_the_problem(raw: str, needle: str) -> None:
    with pytest.raises(EventFormatError) as err:
        SyncEvent.from_json(raw)
    assert needle in str(err.value)
