"""Signed events: an HMAC of what an event says, under a key the group's regions share.

With ``sync.signing_key`` set (``MEMORIA_SYNC__SIGNING_KEY``, from a Secret), the outbox relay
puts ``"sig"`` in front of every event it publishes: HMAC-SHA256, under that key, of the
SHA-256 of the event's content (envelope and payload, keys sorted, numbers as PostgreSQL's
JSONB spells them back, transport markers aside), so the copy read from a NOTIFY, a journal row
or the Stream verifies alike. A reference receiver ignores the key, as it ignores every key it
does not know.

What a receiver with the key does, by ``sync.trust``:

* ``open`` (the default; a mixed fleet with reference regions, which cannot sign): an event
  without ``sig`` is taken as before; one with a ``sig`` that does not verify is refused;
* ``signed``: only events that verify are taken; reference regions' events are refused.

The key is never logged, shown by ``GET /settings``, or put in an error.
"""

from __future__ import annotations

import hashlib
import hmac

import orjson

from .events import SyncEvent, content_digest

SIG_KEY = "sig"


def _mac(digest: bytes, key: bytes) -> str:
    return hmac.new(key, digest, hashlib.sha256).hexdigest()


def sign_encoded(raw: str, key: bytes) -> str:
    """``raw`` (an encoded event of ours, one JSON object) with its ``sig`` in front."""
    data = orjson.loads(raw)
    data.pop(SIG_KEY, None)
    return '{"' + SIG_KEY + '":"' + _mac(content_digest(data), key) + '",' + raw[1:]


def verified(event: SyncEvent, key: bytes) -> bool | None:
    """Whether ``event`` carries a signature that verifies under ``key``; None if it carries
    none."""
    if event.signature is None or event.digest is None:
        return None
    return hmac.compare_digest(event.signature, _mac(event.digest, key))
