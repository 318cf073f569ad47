"""What every sync backend offers, and the reconnecting listener thread they share.

Shape (the guide's): ``Backend(url, channel=...)``, ``.publish(event)``,
``.subscribe(handler) -> subscription``, ``subscription.close()``, ``.close()``; plus
``.flush()``, since ``publish()`` queues (see :mod:`.sender`).

Beyond the guide, :meth:`SyncBackend.subscribe_batches` hands over batches of
:class:`~memoria.sync.events.Delivery` with their journal positions and resumes after a given
position, which is what lets a subscriber apply each event exactly once: it commits the position
with the events it applied, and after any gap (its own restart, a broker restart, a network cut)
it resumes from there.
"""

from __future__ import annotations

import logging
import random
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .events import Delivery, SyncEvent
from .sender import Sender

log = logging.getLogger("memoria.sync")

Handler = Callable[[SyncEvent], None]
BatchHandler = Callable[[list[Delivery]], None]

#: resume position meaning "everything the journal still holds"
BEGINNING = "0"
_LIVE_KEPT = 10_000  # journal-less events kept for a handler that failed (say the store is down)


@dataclass
class ListenerStats:
    reconnects: int = 0
    delivered: int = 0
    connected: bool = False


class Backoff:
    """Exponential backoff with jitter, capped, reset after a success."""

    def __init__(self, first: float = 0.05, cap: float = 5.0) -> None:
        self.first, self.cap, self.current = first, cap, first

    def next(self) -> float:
        delay = self.current * (0.5 + random.random() / 2)  # noqa: S311 - jitter, not crypto
        self.current = min(self.cap, self.current * 2)
        return delay

    def reset(self) -> None:
        self.current = self.first


LossReporter = Callable[[str, int], None]


class Subscription(threading.Thread):
    """A daemon thread that keeps a subscription alive forever: connect, catch up, stream;
    on any error log once, back off, reconnect, resume after the last handled position.

    A batch whose handler raises is not acknowledged: it is offered again after a backoff, so
    a subscriber's failure (say its store is down) loses nothing either.
    """

    def __init__(self, name: str, handler: BatchHandler, after: str | None) -> None:
        super().__init__(name=name, daemon=True)
        self.handler = handler
        self.position = after
        self.stats = ListenerStats()
        self.stopping = threading.Event()
        self._outage_logged = False
        self._live: list[Delivery] = []
        #: told of events the listener knows it lost (reason, count); the link counts them
        self.report_loss: LossReporter | None = None

    def lost(self, reason: str, count: int) -> None:
        if self.report_loss is not None:
            self.report_loss(reason, count)

    # subclasses: one connected session; return when stopping, raise on a broken connection
    @abstractmethod
    def session(self) -> None: ...

    def hand_over(self, batch: list[Delivery]) -> None:
        """Give ``batch`` to the handler; once it returns, resume after its last position."""
        if not batch:
            return
        self.handler(batch)
        self.stats.delivered += len(batch)
        last = batch[-1].position
        if last is not None:
            self.position = last

    def hand_over_live(self, batch: list[Delivery]) -> None:
        """Give the handler events that come from no journal (a reference publisher's PUBLISH
        or NOTIFY): nothing could send them again, so they are kept here (up to 10,000, the
        oldest dropped first) until a handler that failed takes them, also across reconnects."""
        self._live.extend(batch)
        if len(self._live) > _LIVE_KEPT:
            dropped = len(self._live) - _LIVE_KEPT
            log.warning("%s: dropping %d unapplied live events", self.name, dropped)
            del self._live[:-_LIVE_KEPT]
            self.lost("live_overflow", dropped)
        if self._live:
            self.hand_over(self._live)
            self._live = []

    def connected(self) -> None:
        self.stats.connected = True
        if self._outage_logged:
            log.info("%s: reconnected; resuming after position %s", self.name, self.position)
            self._outage_logged = False

    def run(self) -> None:
        backoff = Backoff()
        while not self.stopping.is_set():
            try:
                self.session()
                backoff.reset()
            except Exception as exc:  # any failure: the listener must survive it
                self.stats.connected = False
                if self.stopping.is_set():
                    break
                self.stats.reconnects += 1
                if not self._outage_logged:
                    # once per outage, not once per retry
                    log.warning(
                        "%s: connection lost (%s); reconnecting with backoff", self.name, exc
                    )
                    self._outage_logged = True
                self.stopping.wait(backoff.next())
        self.stats.connected = False
        self.cleanup()

    def cleanup(self) -> None:
        """Release connections (called on the listener thread when it ends)."""

    def close(self, timeout: float = 5.0) -> None:
        self.stopping.set()
        self.wake()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout)

    def wake(self) -> None:
        """Interrupt a blocking read so :meth:`close` returns quickly."""


class SyncBackend(ABC):
    """A transport for sync events between regions."""

    name: str
    _sender: Sender | None = None
    #: whether this region may promote its broker when it is a replica cut off from its
    #: primary (set by the runtime: only the Lease's holder, and only if the settings allow it)
    may_promote: Callable[[], bool] = staticmethod(lambda: False)

    def publish(self, event: SyncEvent) -> None:
        """Send one event (the guide's call): it is queued and sent with whatever else is
        queued, in order; :meth:`flush` waits until the broker has it. Raises
        :class:`~memoria.errors.BrokerUnavailable` while the broker cannot be reached."""
        if self._sender is None:
            self._sender = Sender(self.publish_encoded, f"{self.name}-publisher")
        self._sender.submit((event.event_id, event.to_json()))

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every event given to :meth:`publish` is with the broker."""
        if self._sender is not None:
            self._sender.flush(timeout)

    def close_publisher(self) -> None:
        """Flush what :meth:`publish` queued (briefly) and stop its thread; for ``close()``."""
        if self._sender is not None:
            self._sender.close()

    def publish_many(self, events: Sequence[SyncEvent]) -> None:
        """Publish events in order and wait for the broker, all or (on BrokerUnavailable)
        possibly some of them."""
        self.publish_encoded([(e.event_id, e.to_json()) for e in events])

    @abstractmethod
    def publish_encoded(self, events: Sequence[tuple[str, str]]) -> None:
        """Publish already encoded events, ``(event_id, JSON object text)``, in order.

        The outbox relay uses this: it stores events encoded, and re-encoding thousands of them
        per second for nothing would cost more than the broker round trip.
        """

    def subscribe(self, handler: Handler, *, after: str | None = None) -> Subscription:
        """Call ``handler`` for each valid event; malformed payloads are logged and skipped."""

        def each(batch: list[Delivery]) -> None:
            for delivery in batch:
                if delivery.event is None:
                    if delivery.reason != "foreign":
                        log.warning("skipping a sync payload: %s", delivery.error)
                    continue
                handler(delivery.event)

        return self.subscribe_batches(each, after=after)

    @abstractmethod
    def subscribe_batches(self, handler: BatchHandler, *, after: str | None = None) -> Subscription:
        """Deliver batches in journal order, resuming after ``after`` (``None``: from now,
        :data:`BEGINNING`: everything still journaled)."""

    @abstractmethod
    def ping(self) -> None:
        """Raise if the broker cannot be reached."""

    @abstractmethod
    def close(self) -> None:
        """Close every subscription and connection."""

    @property
    @abstractmethod
    def source_id(self) -> str:
        """Identifies the journal positions refer to (kind, location, channel), no secrets."""
