"""What a region believes of an inbound event: the bounds a peer on the broker cannot pass.

Anyone who can publish on the channel can make a region store what it sends within its privacy
range (that is what a broker is for). These checks stop a peer from doing more than that:

* **size**: an event over :data:`MAX_EVENT_BYTES` is never parsed, a memory text over
  :data:`MAX_TEXT_CHARS` (the API's own cap) is never stored;
* **time**: an event made more than :data:`CLOCK_SKEW` ahead of the receiver's clock, or a
  version beyond what any clock could have produced by now (versions are microseconds of a
  hybrid clock, see :func:`next_version`), is refused. So a forged version can at worst win for
  :data:`CLOCK_SKEW`: the owner's next write after that carries a higher one and repairs it;
* **decrements**: a ``schedule.decremented`` is applied only for a date that is due by the
  receiver's own clock and zone (plus the skew), and only with a fencing token the receiver's
  view of the Lease allows (never above the Lease's transition count; without a Lease, at most
  one above the highest token this store has seen), so a forged token can be refused but never
  raise the fence that refuses the real leader.

Each check answers with the :class:`Refusal` that names why, which the applier counts in
``memoria_sync_events_dropped_total{reason}`` and logs by event id and origin, never content.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

MAX_EVENT_BYTES = 1 << 20  # 1 MiB, as the API's request bodies
MAX_TEXT_CHARS = 100_000  # the API's cap on a memory's text
CATCH_UP_BYTES = 8 << 20  # bytes of events read from a journal at a time
CLOCK_SKEW = dt.timedelta(seconds=120)  # how far ahead of our clock a peer's may be
_SKEW_US = int(CLOCK_SKEW.total_seconds() * 1_000_000)
MAX_TOKEN = (1 << 53) - 1  # a fencing token is a Lease's transition count: far below this


class Refusal(StrEnum):
    """Why an inbound event was refused (labels of ``memoria_sync_events_dropped_total``)."""

    OVERSIZED = "oversized"  # the event or its text is over the limits
    FUTURE = "future"  # made later than our clock plus the skew
    VERSION_AHEAD = "version_ahead"  # a version no clock could have produced yet
    FOREIGN_DELETE = "foreign_delete"  # a delete of a memory another region wrote last
    NOT_DUE = "decrement_not_due"  # a decrement for a date not yet due here
    FENCE = "decrement_token"  # a fencing token the Lease does not allow
    UNSIGNED = "unsigned"  # no signature, where trust is "signed"
    BAD_SIGNATURE = "bad_signature"  # a signature that does not verify under the group's key


def now_us() -> int:
    return time.time_ns() // 1000


def next_version(previous: int, now: int | None = None) -> int:
    """The version of a write after ``previous``: a hybrid logical clock in microseconds.

    Larger than every version seen (so last-writer-wins still orders writes of one memory), and
    at least the writer's clock: a version that someone pushed ahead (up to the skew a receiver
    allows) is overtaken by the owner's next write once its clock passes it.
    """
    return max(previous + 1, now_us() if now is None else now)


def oversized(raw: str | bytes) -> bool:
    """Whether a wire payload is over :data:`MAX_EVENT_BYTES` (counted without encoding it
    when its length alone decides)."""
    size = len(raw)
    if size > MAX_EVENT_BYTES:
        return True
    if isinstance(raw, bytes) or size * 4 <= MAX_EVENT_BYTES:
        return False
    return len(raw.encode(errors="surrogatepass")) > MAX_EVENT_BYTES


def check_time(created_at: dt.datetime, version: int | None, now: dt.datetime) -> Refusal | None:
    """An event's time and version against the receiver's clock ``now``."""
    if created_at > now + CLOCK_SKEW:
        return Refusal.FUTURE
    if version is not None and version > int(now.timestamp() * 1_000_000) + _SKEW_US:
        return Refusal.VERSION_AHEAD
    return None


def check_text(text: str) -> Refusal | None:
    return Refusal.OVERSIZED if len(text) > MAX_TEXT_CHARS else None


@dataclass(frozen=True, slots=True)
class LeaseFacts:
    """What the receiver knows of its group's Lease: its transition count (the fencing token
    the current holder leads with), or None when it watches no Lease (a standalone region) or
    has not seen it yet."""

    transitions: int | None


def check_decrement(
    payload: dict[str, Any],
    *,
    today: dt.date,
    lease: LeaseFacts,
    highest_token: int,
) -> Refusal | None:
    """A peer's decrement (``payload``: ``date``, ``token``) against what the receiver knows.

    ``today`` is the receiver's date in its decrement zone, read from its clock plus
    :data:`CLOCK_SKEW` (a leader whose clock is a little ahead is not refused at midnight).
    ``highest_token`` is the highest fencing token the receiver's store has recorded.
    A bad date is left to the store, which refuses it as ``invalid``.
    """
    try:
        day = dt.date.fromisoformat(str(payload.get("date", "")))
    except ValueError:
        return None
    if day > today:
        return Refusal.NOT_DUE
    token = payload.get("token", 0)
    if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token <= MAX_TOKEN:
        return Refusal.FENCE
    ceiling = lease.transitions if lease.transitions is not None else highest_token + 1
    if token > ceiling:
        return Refusal.FENCE
    return None
