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

from .trust import MAX_EVENT_BYTES

STUB_MARK = '{"truncated":true,'
CHUNK_MARK = '{"action":"memoria.chunk",'
CHUNK_NAMESPACE = "_memoria_chunk"
_PIECE = 3000  # bytes of event per chunk: JSON-escaped in the note, at most twice that
# an event over MAX_EVENT_BYTES is refused anyway: never join more chunks than it takes
_MAX_CHUNKS = MAX_EVENT_BYTES // _PIECE + 2
_MAX_PENDING = 64  # events being joined at once (a sender that died mid-event leaves one)
_MAX_PENDING_CHARS = 8 * MAX_EVENT_BYTES  # characters held in all of them together
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
    """Joins an event's chunks, bounded in events, chunks and characters held, so chunks of
    senders that died (or a peer's flood of chunks that never complete) cannot pile up. A chunk
    that contradicts the others of its event (another count, a piece too large) drops that
    event alone; nothing here raises, so the notifications around it are kept."""

    def __init__(self) -> None:
        self._pending: dict[str, tuple[int, dict[int, str]]] = {}
        self._chars = 0
        self.dropped = 0  # events given up on (incomplete, contradictory or over the bounds)

    def _drop(self, event_id: str) -> None:
        _count, parts = self._pending.pop(event_id)
        self._chars -= sum(map(len, parts.values()))
        self.dropped += 1

    def add(self, note: str) -> str | None:
        """The whole event once its last chunk is in, else None (also for chunks not ours)."""
        try:
            data = orjson.loads(note)
            chunk, piece = data["chunk"], data["data"]
            event_id, i, n = str(chunk["event_id"])[:64], int(chunk["index"]), int(chunk["count"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, OverflowError):
            return None
        if not isinstance(piece, str) or len(piece) > _PIECE or not 0 <= i < n <= _MAX_CHUNKS:
            return None
        held = self._pending.get(event_id)
        if held is not None and (held[0] != n or i in held[1]):
            self._drop(event_id)  # contradicts what came before: give up on this event only
            return None
        if held is None:
            while self._pending and len(self._pending) >= _MAX_PENDING:
                self._drop(next(iter(self._pending)))
            held = self._pending[event_id] = (n, {})
        held[1][i] = piece
        self._chars += len(piece)
        while self._chars > _MAX_PENDING_CHARS and self._pending:
            self._drop(next(iter(self._pending)))  # the oldest first
        if event_id not in self._pending:
            return None
        if len(held[1]) == n:
            del self._pending[event_id]
            self._chars -= sum(map(len, held[1].values()))
            return "".join(held[1][k] for k in range(n))
        return None
