"""The outbox relay: a thread that publishes this region's outbox to the broker, in order.

Every local write stores its event in the outbox in the write's own transaction
(``memoria.writes``); the relay publishes the queue in batches and deletes what the broker
accepted. A broker outage never blocks or fails a write and never loses its event: the relay
retries with backoff and drains the queue when the broker is back. A broker that is reachable
but refuses the events for its setup (a table that is not a journal, a missing privilege, a
read-only replica) is the same to the queue: nothing is dropped, ``/healthz`` names the reason,
and the queue drains once the setting is fixed (live, through ``PATCH /settings``, or by a
restart). Only an event refused for its own content is dropped (counted, logged, named in
``/healthz``), since it would hold up everything behind it for ever. Events are filtered by the
privacy range once more at relay time, so a range narrowed after the write still holds.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager

from ..errors import BrokerRefused, BrokerUnavailable, EventRejected
from ..metrics import DropReason, RuntimeMetrics
from ..privacy import PrivacyRange
from ..store import MemoryStore
from .base import Backoff, SyncBackend
from .signing import sign_encoded

log = logging.getLogger("memoria.sync")

#: lends the relay the current backend (None: sync is off) and the privacy range in force, for
#: the length of one publish; a live settings switch waits until it is given back
Outlet = Callable[[], AbstractContextManager[tuple[SyncBackend | None, PrivacyRange]]]

_INBOX_RETENTION = dt.timedelta(days=7)
_PRUNE_EVERY = 3600.0  # seconds
_REJECTION_SHOWN = 600.0  # seconds /healthz reports a dropped event after the last one


class OutboxRelay:
    def __init__(
        self,
        store: MemoryStore,
        metrics: RuntimeMetrics,
        *,
        region: str,
        outlet: Outlet,
        signing_key: Callable[[], bytes | None] = lambda: None,
    ) -> None:
        self.store = store
        self._signing_key = signing_key  # read per batch: PATCH /settings applies live
        self.metrics = metrics
        self.region = region
        self._outlet = outlet
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._flush_deadline = 0.0
        self.last_error: str | None = None  # the broker's, while it is unreachable or refuses
        self.refused = False  # last_error is a refusal (reachable, but refusing for its setup)
        self._last_rejection: tuple[float, str] | None = None  # (when, what) of a dropped event
        self._last_prune = -math.inf  # never: prune at the first idle moment

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="sync-relay", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Something was queued (or the backend changed): relay now, not at the next poll."""
        self._wake.set()

    def stop(self, flush_timeout: float) -> None:
        """Relay what is queued for up to ``flush_timeout`` s, then end the thread; the rest
        stays in the outbox for the next start."""
        self._flush_deadline = time.monotonic() + flush_timeout
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(flush_timeout + 10)

    def relay_once(self) -> bool:
        """Publish one batch of the outbox; True if something was sent or dropped."""
        batch = self.store.outbox_batch(self.region)
        if not batch:
            return False
        with self._outlet() as (backend, privacy):
            if backend is None:
                return False  # sync switched off meanwhile: keep the queue
            # the range is read while the backend is lent: once a narrowing PATCH has returned,
            # nothing outside the new range goes out
            events = [
                (r.event_id, r.body)
                for r in batch
                if r.y_coord is None or privacy.allows(r.y_coord)
            ]
            key = self._signing_key()
            if key is not None:
                events = [(event_id, sign_encoded(body, key)) for event_id, body in events]
            if len(events) < len(batch):
                self.metrics.dropped.labels(DropReason.PRIVACY_OUT).inc(len(batch) - len(events))
            try:
                backend.publish_encoded(events)
                sent = len(events)
            except EventRejected:
                sent = self._publish_one_by_one(backend, events)
        self.store.outbox_remove(self.region, [r.seq for r in batch])
        self.metrics.published.inc(sent)
        return True

    def _publish_one_by_one(self, backend: SyncBackend, events: list[tuple[str, str]]) -> int:
        """A batch the broker refused: send its events singly and drop only those refused
        (they would be refused forever and hold up everything behind them)."""
        sent = 0
        for event_id, body in events:
            try:
                backend.publish_encoded([(event_id, body)])
                sent += 1
            except EventRejected as exc:
                self.metrics.dropped.labels(DropReason.REJECTED).inc()
                self._last_rejection = (time.monotonic(), f"event {event_id}: {exc}")
                log.error("sync: the broker refuses event %s for good (%s); dropped", event_id, exc)
        return sent

    @property
    def recent_rejection(self) -> str | None:
        """The last event dropped for its content, if that was within the last 10 minutes."""
        if self._last_rejection is None:
            return None
        when, what = self._last_rejection
        return what if time.monotonic() - when < _REJECTION_SHOWN else None

    def _failed(self, exc: BrokerUnavailable, stopping: bool) -> None:
        refused = isinstance(exc, BrokerRefused)
        if isinstance(exc, BrokerRefused):
            self.metrics.refused.labels(exc.reason).inc()
        else:
            self.metrics.broker_errors.inc()
        if self.last_error != str(exc):  # logged once per condition, not once per retry
            if refused:
                log.error(
                    "sync: %s (%d events kept in the outbox)",
                    exc,
                    self.store.outbox_depth(self.region),
                )
            elif self.last_error is None:
                log.warning(
                    "sync: broker unavailable (%s); writes are kept in the outbox "
                    "and relayed when it is back",
                    exc,
                )
        self.last_error, self.refused = str(exc), refused
        if stopping:
            log.warning(
                "sync: stopping with %d events kept in the outbox",
                self.store.outbox_depth(self.region),
            )

    def _loop(self) -> None:
        backoff = Backoff(0.05, 5.0)
        while True:
            stopping = self._stopping.is_set()
            if stopping and time.monotonic() >= self._flush_deadline:
                return
            self._wake.clear()
            try:
                sent = self.relay_once()
            except BrokerUnavailable as exc:
                self._failed(exc, stopping)
                if stopping:
                    return
                self._wake.wait(backoff.next())
                continue
            except Exception:
                # anything else (the store down, a bug): the relay thread must outlive it, and
                # the outbox still holds every event, so retrying loses nothing
                log.exception("sync: relay failed; retrying")
                self._wake.wait(backoff.next())
                continue
            if self.last_error is not None:
                log.info("sync: the broker takes events again; relaying the outbox")
                self.last_error, self.refused = None, False
            backoff.reset()
            if not sent:
                if stopping:
                    return
                self._maybe_prune()
                self._wake.wait(1.0)

    def _maybe_prune(self) -> None:
        # done in the relay's idle moments: the inbox keeps applied event ids for a week, to
        # recognise re-deliveries; older ones only take space
        if time.monotonic() - self._last_prune > _PRUNE_EVERY:
            self._last_prune = time.monotonic()
            try:
                self.store.prune_inbox(_INBOX_RETENTION)
            except Exception:
                # pruning is housekeeping: a failure must not stop the relay; next hour again
                log.exception("sync: pruning the inbox failed")
