"""``publish(event)`` for the guide's call pattern: one event per call, many calls in a row.

Waiting for the broker's answer on every call caps such a loop at one round trip per event
(measured on a 2-core machine: the reference implementation's 7-9k events/s on Redis, 2.1k/s
on PostgreSQL). ``publish()`` hands the event to a :class:`Sender` instead: one thread per
backend that sends whatever has queued meanwhile as one batch (``publish_encoded``), so a loop
of calls costs a round trip per batch, not per event.

What a caller can rely on:

* order: events go out in the order ``publish()`` was called on that backend;
* ``publish()`` returns once the event is queued; ``flush()`` waits until the broker has
  everything queued before it, and raises if it could not; ``close()`` flushes first, and so
  does the interpreter's exit (for up to 5 s);
* broker down: what was queued is retried until the broker is back (at least once: a batch
  whose answer was lost is sent again; receivers of ours drop the repeat by its event id), and
  ``publish()`` raises BrokerUnavailable without queuing, as a waiting publish would;
* a full queue (``max_queued`` events) makes ``publish()`` wait for room, never drop;
* an event the broker refuses for its content is dropped, logged, and reported by the next
  ``flush()``.

An event is as safe as the publishing process until ``flush()`` returns. ``memoria serve``
never relies on that: its writes go through the transactional outbox.
"""

from __future__ import annotations

import atexit
import logging
import threading
import weakref
from collections import deque
from collections.abc import Callable, Sequence

from ..errors import BrokerUnavailable, EventRejected, SyncError

log = logging.getLogger("memoria.sync")

Encoded = tuple[str, str]  # (event_id, JSON text)
_EXIT_FLUSH = 5.0  # seconds the interpreter's exit waits for queued events
_FIRST_RETRY, _LAST_RETRY = 0.05, 5.0  # seconds between attempts while the broker is away


def _close_at_exit(ref: weakref.ReferenceType[Sender]) -> None:
    sender = ref()
    if sender is not None:
        sender.close(_EXIT_FLUSH)


class Sender:
    def __init__(
        self,
        send: Callable[[Sequence[Encoded]], None],
        name: str,
        *,
        max_batch: int = 1000,
        max_queued: int = 100_000,
    ) -> None:
        self._send = send
        self.name = name
        self.max_batch = max_batch
        self.max_queued = max_queued
        self._queue: deque[Encoded] = deque()  # sent items leave it only once acknowledged
        self._cond = threading.Condition()
        self._error: str | None = None  # the broker's, while the sender cannot reach it
        self._rejected: list[str] = []
        self._closing = False
        self._thread: threading.Thread | None = None
        atexit.register(_close_at_exit, weakref.ref(self))

    @property
    def queued(self) -> int:
        return len(self._queue)

    def submit(self, item: Encoded) -> None:
        with self._cond:
            if self._closing:
                raise SyncError(f"{self.name}: the backend is closed")
            if self._error is not None:
                raise BrokerUnavailable(
                    f"{self._error} ({len(self._queue)} earlier events queued for when it is back)"
                )
            while len(self._queue) >= self.max_queued and self._error is None:
                self._cond.wait(0.5)  # backpressure: the caller waits for room
            self._queue.append(item)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until everything queued so far is with the broker.

        Raises BrokerUnavailable if it is not after ``timeout`` seconds (the events stay
        queued), EventRejected naming the events the broker refused since the last flush.
        """
        with self._cond:
            done = self._cond.wait_for(lambda: not self._queue, timeout)
            rejected, self._rejected = self._rejected, []
            if not done:
                raise BrokerUnavailable(
                    f"{self.name}: {len(self._queue)} events not yet accepted by the broker "
                    f"after {timeout:.0f}s ({self._error or 'slow broker'}); they stay queued"
                )
        if rejected:
            raise EventRejected(f"the broker refused {len(rejected)} events: {', '.join(rejected)}")

    def close(self, timeout: float = 10.0) -> None:
        """Flush for up to ``timeout`` seconds, then stop the thread; what is left is logged."""
        with self._cond:
            if self._closing:
                return
            self._closing = True
            self._cond.wait_for(lambda: not self._queue, timeout)
            left = len(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        if left:
            log.error("%s: closed with %d events the broker never accepted", self.name, left)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    # -- the sending thread ------------------------------------------------------------------

    def _run(self) -> None:
        delay = _FIRST_RETRY
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._closing)
                if not self._queue:
                    return
                batch = [self._queue[i] for i in range(min(len(self._queue), self.max_batch))]
            try:
                try:
                    self._send(batch)
                    self._acknowledge(len(batch))
                except EventRejected:
                    self._send_singly(batch)
            except BrokerUnavailable as exc:
                with self._cond:
                    if self._error is None:
                        log.warning("%s: %s; retrying the queued events", self.name, exc)
                    self._error = str(exc)
                    self._cond.notify_all()  # blocked submitters raise now
                    self._cond.wait(delay)
                delay = min(_LAST_RETRY, delay * 2)
                continue
            except Exception:
                # a bug or an unexpected driver error: the thread must outlive it, and the
                # batch is still queued, so retrying loses nothing
                log.exception("%s: publishing failed; retrying", self.name)
                with self._cond:
                    self._cond.wait(delay)
                delay = min(_LAST_RETRY, delay * 2)
                continue
            delay = _FIRST_RETRY

    def _acknowledge(self, count: int) -> None:
        with self._cond:
            for _ in range(min(count, len(self._queue))):  # close() may have cleared it
                self._queue.popleft()
            if self._error is not None:
                log.info("%s: the broker is back", self.name)
            self._error = None
            self._cond.notify_all()

    def _send_singly(self, batch: list[Encoded]) -> None:
        """A batch refused for its content: send its events one by one, drop only those the
        broker refuses (they would be refused forever and hold up everything behind them)."""
        for event_id, raw in batch:
            try:
                self._send([(event_id, raw)])
            except EventRejected as exc:
                log.error("%s: the broker refuses event %s (%s); dropped", self.name, event_id, exc)
                with self._cond:
                    self._rejected.append(event_id)
            self._acknowledge(1)
