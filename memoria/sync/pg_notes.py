"""NOTIFY payloads without a journal table, for events too large for one NOTIFY.

PostgreSQL refuses a NOTIFY payload of 8000 bytes or more. Without a table to read such an
event from, it is sent as:

1. a stub for reference receivers: the envelope and ``memory_id``, ``namespace`` and
   ``privacy``, marked ``"truncated": true`` (enough to apply a deletion; a create or update
   stub carries no content, so a reference receiver stores nothing from it);
2. the event in numbered chunks for our receivers, each a JSON object whose action and
   namespace no reference receiver handles (so it ignores them, as the contract says).

Notifications of one transaction arrive together and in order, so a receiver joins the chunks
as they come; one that joins a stream mid-event drops the incomplete event (live delivery
without a table keeps nothing anyway).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

STUB_MARK = '{"truncated":true,'
CHUNK_MARK = '{"action":"memoria.chunk",'
CHUNK_NAMESPACE = "_memoria_chunk"
_PIECE = 3000  # bytes of event per chunk: JSON-escaped in the note, at most twice that
_MAX_CHUNKS = 10_000
_MAX_PENDING = 1000  # events being joined at once (a sender that died mid-event leaves one)
_ENVELOPE = ("action", "entity_type", "namespace", "created_at", "entity_id", "origin", "event_id")


def stub(raw: str) -> str:
    """The stub of an encoded event (see the module's docstring)."""
    data = orjson.loads(raw)
    payload = data.get("payload") if isinstance(data.get("payload"), dict) else {}
    body: dict[str, Any] = {k: data[k] for k in _ENVELOPE if k in data}
    body["payload"] = {k: payload[k] for k in ("memory_id", "namespace", "privacy") if k in payload}
    return STUB_MARK + orjson.dumps(body).decode()[1:]


def split_utf8(text: str, limit: int) -> list[str]:
    """Split ``text`` into pieces whose UTF-8 encoding is at most ``limit`` bytes."""
    data, pieces, start = text.encode(), [], 0
    while start < len(data):
        end = min(start + limit, len(data))
        while end < len(data) and (data[end] & 0xC0) == 0x80:  # not inside a character
            end -= 1
        pieces.append(data[start:end].decode())
        start = end
    return pieces


def notes_for(events: Sequence[tuple[str, str]], limit: int) -> list[str]:
    """The NOTIFY payloads of ``events`` (``(event_id, JSON)``), in order."""
    notes: list[str] = []
    for event_id, raw in events:
        if len(raw) * 4 < limit or len(raw.encode()) < limit:
            notes.append(raw)
            continue
        notes.append(stub(raw))
        pieces = split_utf8(raw, _PIECE)
        notes += [
            orjson.dumps(
                {
                    "action": "memoria.chunk",
                    "entity_type": "chunk",
                    "namespace": CHUNK_NAMESPACE,
                    "chunk": {"event_id": event_id, "index": i, "count": len(pieces)},
                    "data": piece,
                }
            ).decode()
            for i, piece in enumerate(pieces)
        ]
    return notes


class Chunks:
    """Joins an event's chunks; bounded, so chunks of senders that died cannot pile up."""

    def __init__(self) -> None:
        self._pending: dict[str, list[str]] = {}

    def add(self, note: str) -> str | None:
        """The whole event once its last chunk is in, else None (also for chunks not ours)."""
        try:
            data = orjson.loads(note)
            chunk, piece = data["chunk"], data["data"]
            event_id, i, n = str(chunk["event_id"]), int(chunk["index"]), int(chunk["count"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None
        if not isinstance(piece, str) or not 0 <= i < n <= _MAX_CHUNKS:
            return None
        if event_id not in self._pending and len(self._pending) >= _MAX_PENDING:
            self._pending.pop(next(iter(self._pending)))
        parts = self._pending.setdefault(event_id, [""] * n)
        if len(parts) != n:
            return None
        parts[i] = piece
        if i == n - 1:
            del self._pending[event_id]
            return "".join(parts)
        return None
