"""The memory store: embedded SQLite by default, PostgreSQL by URL.

Besides memories it keeps what makes sync lose nothing and apply once:

* ``sync_outbox``: events written in the same transaction as the memory they describe, relayed
  to the broker later (a transactional outbox), tagged with the region that wrote them;
* ``sync_inbox``: ids of inbound events already applied, so a re-delivery changes nothing;
* ``sync_cursors``: per source, the journal position applied last, committed with the events;
* ``service_metadata``: ``last_decrement_date`` and who ran it, claimed by compare-and-set with a
  fencing token so one date is decremented once even by two processes that both think they lead.

One module per concern, one :class:`MemoryStore` over them all:

=================  ===============================================================
``records``        the values taken and returned (``Memory``, ``InboundOp``, ...)
``dialects``       SQLite and PostgreSQL: connections, transactions, SQL differences
``schema``         tables, migrations, seeded metadata
``memories``       the region's own writes and all reads of memories
``outbox``         events queued with the writes, for the relay
``inbound``        peers' events applied once, cursors, last-writer-wins
``decrement``      the daily decrement, claimed by compare-and-set on a fencing token
=================  ===============================================================
"""

from __future__ import annotations

from .decrement import DECREMENT_KEYS, Decrements
from .dialects import Database, open_database
from .inbound import Inbound
from .memories import Memories
from .outbox import Outbox
from .records import (
    UNKNOWN_AS_OF,
    DecrementOutcome,
    DecrementReason,
    EventFactory,
    InboundKind,
    InboundOp,
    InboundResult,
    Memory,
    OutboxRow,
    memory_event,
    utcnow,
)
from .schema import prepare


class MemoryStore(Memories, Outbox, Inbound, Decrements):
    """Memories plus the sync bookkeeping tables, in SQLite or PostgreSQL.

    Its methods live with their concern (:mod:`.memories`, :mod:`.outbox`, :mod:`.inbound`,
    :mod:`.decrement`); each one that reads or writes runs in a single transaction.
    """

    def __init__(self, url: str) -> None:
        self.db: Database = open_database(url)
        self.url_for_humans = self.db.url_for_humans
        prepare(self.db)

    def close(self) -> None:
        self.db.close()

    def ping(self) -> None:
        self.db.ping()


__all__ = [
    "DECREMENT_KEYS",
    "UNKNOWN_AS_OF",
    "DecrementOutcome",
    "DecrementReason",
    "EventFactory",
    "InboundKind",
    "InboundOp",
    "InboundResult",
    "Memory",
    "MemoryStore",
    "OutboxRow",
    "memory_event",
    "open_database",
    "utcnow",
]
