"""Signed events (the optional part of review row 3): what a signature covers, and the key
kept out of every view."""

from __future__ import annotations

import orjson
import pytest
from pydantic import SecretStr, ValidationError

from memoria.settings import MemoriaSettings, SyncSettings, apply_updates, public_view
from memoria.sync.events import SyncEvent, decode
from memoria.sync.signing import sign_encoded, verified

KEY = b"group-key-not-for-logs"


def _signed(event: SyncEvent, key: bytes = KEY) -> str:
    return sign_encoded(event.to_json(), key)


def test_a_signature_verifies_on_every_copy_and_nothing_else() -> None:
    event = SyncEvent("memory.created", namespace="d", payload={"text": "t", "y": 2.0}, origin="a")
    raw = _signed(event)
    received = decode(raw, None).event
    assert received is not None and verified(received, KEY) is True
    # the journal's copy: JSONB re-spells 2.0 as 2 and reorders keys, a marker is spliced in
    respelled = orjson.loads(raw)
    respelled["payload"]["y"] = 2
    row = '{"journal_id":7,' + orjson.dumps(dict(reversed(respelled.items()))).decode()[1:]
    copy = decode(row, "7").event
    assert copy is not None and verified(copy, KEY) is True
    assert verified(received, b"another key") is False
    tampered = orjson.loads(raw)
    tampered["payload"]["text"] = "changed"
    forged = decode(orjson.dumps(tampered), None).event
    assert forged is not None and verified(forged, KEY) is False
    unsigned = decode(event.to_json(), None).event
    assert unsigned is not None and verified(unsigned, KEY) is None


def test_signed_trust_needs_a_key_and_the_key_never_shows() -> None:
    with pytest.raises(ValidationError, match="signing_key"):
        SyncSettings(trust="signed")
    settings = MemoriaSettings(
        region="a", sync=SyncSettings(trust="signed", signing_key=SecretStr(KEY.decode()))
    )
    assert KEY.decode() not in orjson.dumps(public_view(settings)).decode()
    assert KEY.decode() not in repr(settings)
    patched = apply_updates(settings, {"sync.privacy_floor": 0})
    assert patched.sync.key == KEY  # a PATCH of something else keeps the key itself
