"""Memory events both ways, without a broker: the reference's captured messages read by our
applier's rules, and our outbox's events applied by the reference receiver's rules."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from pydantic import SecretStr

from memoria.metrics import RuntimeMetrics
from memoria.settings import DatabaseSettings, MemoriaSettings, SyncSettings
from memoria.store import MemoryStore
from memoria.sync.events import Action, SyncEvent
from memoria.sync.payload import memory_id_of, privacy_of, read_memory
from memoria.sync.pg_notes import CHUNK_MARK, STUB_MARK, Chunks, notes_for
from memoria.writes import WriteService
from testbed.reference_peer import ReferenceReceiver, capture

CREATED = "3f6c1a52-8d0e-4f7b-9a61-2b5d7c0e9a14"


def test_reference_captures_read_as_memories() -> None:
    created = SyncEvent.from_json(capture("memory.created"))
    facts = read_memory(created)
    assert (facts.memory_id, facts.text, facts.y_coord) == (CREATED, "met Ana at the harbour", 4.0)
    assert created.event_id.startswith("c")  # derived from the content: it carries none
    updated = read_memory(SyncEvent.from_json(capture("memory.updated")))
    assert updated.text == "met Ana and Luis at the harbour"
    assert updated.version > facts.version  # ordered by when the reference made them
    deleted = SyncEvent.from_json(capture("memory.deleted"))
    assert deleted.action is Action.DELETE and memory_id_of(deleted) == CREATED


def test_the_payloads_memory_id_wins_over_entity_id() -> None:
    # the capture's envelope names another memory than its payload does; the reference
    # receiver stores replica.record, so the payload's id is the one that exists over there
    private = SyncEvent.from_json(capture("memory.created.private-y-12"))
    assert private.entity_id == CREATED
    assert memory_id_of(private) == "00000000-0000-0000-0000-000000000007"
    assert privacy_of(private.payload) == -12.0


def test_privacy_is_privacy_then_snapshot_then_record() -> None:
    record = {"record": {"y_coord": 3, "processed_data": {"text": "r"}}}
    assert privacy_of({"privacy": 1, "snapshot": {"y_coord": 2}, "replica": record}) == 1
    assert privacy_of({"snapshot": {"y_coord": 2}, "replica": record}) == 2
    assert privacy_of({"replica": record}) == 3
    flat = SyncEvent("memory.created", "memory", "default", "m9", {"text": "flat", "y_coord": -4})
    facts = read_memory(flat)  # a flat payload is the snapshot itself
    assert (facts.memory_id, facts.text, facts.y_coord) == ("m9", "flat", -4.0)
    only_record = SyncEvent("memory.created", "memory", "default", "m8", {"replica": record})
    assert read_memory(only_record).text == "r"


@pytest.fixture
def writes(tmp_path: Path) -> Iterator[WriteService]:
    settings = MemoriaSettings(
        region="region-a",
        sync=SyncSettings(enabled=True, privacy_floor=0),
        database=DatabaseSettings(connection_string=SecretStr(f"sqlite:///{tmp_path}/a.db")),
    )
    store = MemoryStore(settings.database.connection_string.get_secret_value())
    yield WriteService(store, lambda: settings, RuntimeMetrics())
    store.close()


def _drain(writes: WriteService) -> list[str]:
    batch = writes.store.outbox_batch("region-a")
    writes.store.outbox_remove("region-a", [r.seq for r in batch])
    return [r.body for r in batch]


def test_a_reference_receiver_applies_what_we_send(writes: WriteService) -> None:
    peer = ReferenceReceiver(floor=0)
    memory = writes.create_memory(text="met Ana", y_coord=4.0)
    (created,) = _drain(writes)
    peer.receive(created)
    assert peer.text(memory.id) == "met Ana"
    assert peer.cache[memory.id]["text"] == "met Ana"
    wire = json.loads(created)
    assert wire["action"] == "memory.created" and wire["payload"]["privacy"] == 4.0
    assert set(wire["payload"]["replica"]["record"]) >= {
        "memory_id",
        "processed_data",
        "x_coord",
        "y_coord",
        "z_coord",
        "symbolic_anchors",
        "namespace",
        "timestamp",
        "created_at",
    }

    writes.update_memory(memory.id, {"text": "met Ana and Luis"})
    (updated,) = _drain(writes)
    assert json.loads(updated)["payload"]["changes"] == {"text": "met Ana and Luis"}
    peer.receive(updated)
    assert peer.text(memory.id) == "met Ana and Luis"

    # leaving the shared range: a deletion that carries the privacy the peer knows, no text
    writes.update_memory(memory.id, {"y_coord": -12.0, "text": "now private"})
    (withdrawn,) = _drain(writes)
    assert "now private" not in withdrawn
    assert json.loads(withdrawn)["payload"]["privacy"] == 4.0
    peer.receive(withdrawn)
    assert memory.id not in peer.rows

    again = writes.create_memory(text="short-lived", y_coord=1.0)
    writes.delete_memory(again.id)
    for body in _drain(writes):
        peer.receive(body)
    assert again.id not in peer.rows
    assert peer.applied == [
        ("memory.created", memory.id),
        ("memory.updated", memory.id),
        ("memory.deleted", memory.id),
        ("memory.created", again.id),
        ("memory.deleted", again.id),
    ]


def test_our_decrement_is_nothing_to_a_reference_receiver(writes: WriteService) -> None:
    writes.create_memory(text="m", y_coord=1.0)
    _drain(writes)
    assert writes.run_decrement("2030-01-01", token=1).ran
    (decrement,) = _drain(writes)
    wire = json.loads(decrement)
    assert wire["action"] == "schedule.decremented" and wire["namespace"] == "_schedule"
    for namespace in ("default", "_schedule"):  # even one that took it for its own namespace
        peer = ReferenceReceiver(namespace=namespace)
        peer.receive(json.dumps({**wire, "namespace": namespace}))
        assert (peer.rows, peer.cache, peer.applied) == ({}, {}, [])


def test_the_reference_receiver_keeps_the_private_capture_out() -> None:
    peer = ReferenceReceiver(floor=0)
    peer.receive(capture("memory.created.private-y-12"))
    peer.receive(capture("memory.created"))
    assert list(peer.rows) == [CREATED]


def test_oversize_events_without_a_table_are_a_stub_and_chunks() -> None:
    text = "ü€" * 6000
    event = SyncEvent(
        "memory.created",
        "memory",
        "default",
        "m1",
        {"memory_id": "m1", "namespace": "default", "privacy": 2.0, "snapshot": {"text": text}},
        "region-a",
    )
    raw = event.to_json()
    notes = notes_for([(event.event_id, raw)], 7900)
    assert all(len(n.encode()) < 8000 for n in notes)
    stub, chunks = notes[0], notes[1:]
    assert stub.startswith(STUB_MARK) and text[:10] not in stub
    peer = ReferenceReceiver()
    for note in notes:
        peer.receive(note)
    assert (peer.rows, peer.cache) == ({}, {})  # a stub has no content; chunks are not its
    assert all(c.startswith(CHUNK_MARK) for c in chunks)
    joiner = Chunks()
    joined = [j for j in map(joiner.add, chunks) if j is not None]
    assert [orjson.loads(j) for j in joined] == [orjson.loads(raw)]


def test_namespaces_not_exchanged_stay_home(tmp_path: Path) -> None:
    settings = MemoriaSettings(
        region="region-a",
        sync=SyncSettings(enabled=True, namespaces=["default"]),
        database=DatabaseSettings(connection_string=SecretStr(f"sqlite:///{tmp_path}/n.db")),
    )
    store = MemoryStore(settings.database.connection_string.get_secret_value())
    writes = WriteService(store, lambda: settings, RuntimeMetrics())
    writes.create_memory(text="shared", y_coord=0.0)
    writes.create_memory(text="kept", y_coord=0.0, namespace="team-x")
    bodies = [json.loads(r.body) for r in store.outbox_batch("region-a")]
    assert [b["payload"]["snapshot"]["text"] for b in bodies] == ["shared"]
    store.close()
