"""What a hostile peer with the broker's credentials publishes, for the hostile-peer tests and
the soak (``bench/hostile_soak.py``): forged decrements and memory events, as wire objects."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import orjson

from memoria.sync import SyncBackend


def forge(backend: SyncBackend, *events: dict[str, Any]) -> None:
    """Publish wire objects as they are, with the broker's credentials."""
    backend.publish_encoded([(uuid.uuid4().hex, orjson.dumps(e).decode()) for e in events])


def forged_decrement(date: str, token: int, origin: str = "region-a") -> dict[str, Any]:
    return {
        "action": "schedule.decremented",
        "entity_type": "schedule",
        "namespace": "_schedule",
        "origin": origin,
        "event_id": uuid.uuid4().hex,
        "payload": {"date": date, "token": token, "region": origin},
    }


def forged_memory_event(
    action: str,
    memory_id: str,
    origin: str,
    *,
    namespace: str = "default",
    created_at: str | None = None,
    **payload: Any,
) -> dict[str, Any]:
    """A memory event claiming ``origin``; ``payload`` keys are added to its payload (a
    ``version``, say). Creates and updates carry the text ``forged``."""
    body: dict[str, Any] = {"memory_id": memory_id, "namespace": namespace, "privacy": 0}
    if action != "memory.deleted":
        body["snapshot"] = {"memory_id": memory_id, "text": "forged", "y_coord": 0}
    return {
        "action": action,
        "entity_type": "memory",
        "namespace": namespace,
        "entity_id": memory_id,
        "origin": origin,
        "event_id": uuid.uuid4().hex,
        "created_at": created_at or dt.datetime.now(dt.UTC).isoformat(),
        "payload": {**body, **payload},
    }
