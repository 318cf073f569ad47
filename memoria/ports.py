"""The small types the runtime's parts hand each other, in a module that imports none of them.

* :class:`Leadership`: what the Lease watcher (or a standalone region) tells the scheduler;
* :class:`DecrementTarget`: what the scheduler needs to run the daily decrement (the write
  service provides it; tests give a fake);
* :class:`Clock`: where the scheduler reads the time (a fake one in tests).

They live here, not beside their consumers, so that a producer never has to import its consumer:
that is what keeps ``memoria`` free of import cycles (``hack/check-import-cycles.py``).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from .store import DecrementOutcome


class LeadershipSource(StrEnum):
    STANDALONE = "standalone"  # no Lease configured: the region leads unless disabled
    LEASE = "lease"  # the scheduler Lease, watched live


@dataclass(frozen=True, kw_only=True)
class Leadership:
    """Whether this region may run the decrement now, and with which fencing token."""

    leading: bool
    token: int  # the Lease's transition count: the store refuses a lower one
    holder: str | None = None
    source: LeadershipSource = LeadershipSource.STANDALONE


class DecrementTarget(Protocol):
    """What the scheduler needs from the rest of the region."""

    def run_decrement(self, date: str, token: int) -> DecrementOutcome:
        """One fenced decrement of ``date`` (ISO) with fencing token ``token``."""
        ...

    def last_decrement_date(self) -> str | None:
        """The last date decremented in this region's store (by anyone), if any."""
        ...

    def raise_fencing_token(self, token: int) -> None:
        """Refuse leaders with a lower token from now on."""
        ...


class Clock(Protocol):
    def now(self) -> dt.datetime:
        """The current time, timezone-aware."""
        ...
