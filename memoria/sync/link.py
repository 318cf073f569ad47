"""A region's link to its peers: the backend connection, switched live, and its health.

The link owns the backend and the subscription. Outbound, it lends the backend to the outbox
relay (``relay.py``) one publish at a time; inbound, the subscription hands each batch to the
inbound applier (``applier.py``) with the cursor key of this region and journal. New settings
are taken live: a new backend is opened before the old one is closed (so a bad one changes
nothing), and the outbox is untouched across the switch, so nothing queued is lost.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum

from ..errors import BrokerBusy, BrokerUnavailable
from ..metrics import RuntimeMetrics
from ..privacy import PrivacyRange
from ..settings import MemoriaSettings, SyncSettings
from ..store import MemoryStore
from . import create_backend
from .applier import InboundApplier
from .base import BEGINNING, Subscription, SyncBackend
from .relay import OutboxRelay

log = logging.getLogger("memoria.sync")

BackendFactory = Callable[[SyncSettings], SyncBackend]
_LOCK_WAIT = 10.0  # seconds a live switch or a stop waits for a publish in flight
_CONNECTION_FIELDS = ("enabled", "backend", "connection_url", "channel", "table")


class SyncState(StrEnum):
    OK = "ok"
    DEGRADED = "degraded"  # the broker or the listener is unreachable; writes are kept
    DOWN = "down"  # both: nothing goes out, nothing comes in
    DISABLED = "disabled"  # sync is off


@dataclass(frozen=True, kw_only=True)
class SyncHealth:
    state: SyncState
    detail: str
    outbox_depth: int
    listener_connected: bool | None  # None: no listener (sync off or no realtime replication)
    reconnects: int


class SyncLink:
    def __init__(
        self,
        settings: MemoriaSettings,
        store: MemoryStore,
        metrics: RuntimeMetrics,
        backend_factory: BackendFactory = create_backend,
    ) -> None:
        self.settings = settings  # replaced under the lock by apply_settings
        self.store = store
        self.metrics = metrics
        self.backend_factory = backend_factory
        # whether this region may promote a replica broker cut off from its primary (the
        # runtime sets it: the Lease holder, if the settings allow)
        self.may_promote: Callable[[], bool] = lambda: False
        self.backend: SyncBackend | None = None
        self.subscription: Subscription | None = None
        self._lock = threading.RLock()
        self._reconnects_before = 0  # listener reconnects of subscriptions already closed
        self.relay = OutboxRelay(
            store,
            metrics,
            region=self.region,
            outlet=self._lend,
            signing_key=lambda: self.settings.sync.key,
        )
        self.applier = InboundApplier(
            store, metrics, region=self.region, sync=lambda: self.settings.sync, today=self._today
        )
        metrics.track_outbox(lambda: float(store.outbox_depth(self.region)))
        metrics.track_reconnects(lambda: float(self.reconnects))

    @property
    def region(self) -> str:
        return self.settings.region

    def _today(self, ahead: dt.timedelta) -> dt.date:
        """This region's date ``ahead`` of now, by the clock and zone its scheduler uses."""
        offset = dt.timedelta(seconds=self.settings.scheduler.clock_offset_seconds)
        now = dt.datetime.now(dt.UTC) + offset + ahead
        return now.astimezone(self.settings.timezone).date()

    @property
    def privacy(self) -> PrivacyRange:
        return PrivacyRange(*self.settings.privacy_range)

    @property
    def reconnects(self) -> int:
        sub = self.subscription
        return self._reconnects_before + (sub.stats.reconnects if sub else 0)

    def wake(self) -> None:
        """Tell the relay something was queued."""
        self.relay.wake()

    @contextmanager
    def _lend(self) -> Iterator[tuple[SyncBackend | None, PrivacyRange]]:
        with self._lock:
            yield self.backend, self.privacy

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            self._open(self.settings.sync)
        self.relay.start()

    def stop(self, flush_timeout: float = 5.0) -> None:
        """Stop: try to relay what is queued for up to ``flush_timeout`` s; the rest stays in
        the outbox for the next start. Then close the listener and the broker connections."""
        self.relay.stop(flush_timeout)
        if self._lock.acquire(timeout=_LOCK_WAIT):
            try:
                self._close()
            finally:
                self._lock.release()
        else:  # the relay is stuck inside a publish (a stalled broker): leave it behind
            log.warning("sync: the relay is stuck publishing; closing without it")

    def _open(self, sync: SyncSettings, backend: SyncBackend | None = None) -> None:
        if not sync.enabled:
            return
        self.backend = backend or self.backend_factory(sync)
        self.backend.may_promote = self.may_promote
        if sync.realtime_replication:
            # the cursor key names this region and the journal: regions sharing one store
            # keep separate cursors, and a switched backend starts a cursor of its own
            source = f"{self.region}|{self.backend.source_id}"
            after = self.store.get_cursor(source) or BEGINNING
            self.subscription = self.backend.subscribe_batches(
                lambda batch: self.applier.apply(batch, source), after=after
            )
            self.subscription.report_loss = self._lost
            log.info("sync: subscribed to %s (resuming after %s)", self.backend.source_id, after)

    def _lost(self, reason: str, count: int) -> None:
        self.metrics.lost.labels(reason).inc(count)

    def _close(self) -> None:
        if self.subscription is not None:
            self._reconnects_before += self.subscription.stats.reconnects
            self.subscription.close()
            self.subscription = None
        if self.backend is not None:
            self.backend.close()
            self.backend = None

    def apply_settings(self, new: MemoriaSettings) -> None:
        """Take new settings live. Connection changes open the new backend first (so a bad
        one changes nothing), then close the old backend and listener; the outbox is
        untouched, so nothing queued is lost across the switch. Raises BrokerUnavailable,
        changing nothing, if the new broker cannot be reached or refuses our credentials, and
        BrokerBusy if the relay is stuck inside a publish."""
        old = self.settings.sync
        reconnect = any(getattr(old, f) != getattr(new.sync, f) for f in _CONNECTION_FIELDS)
        reconnect |= old.realtime_replication != new.sync.realtime_replication
        fresh = self.backend_factory(new.sync) if reconnect and new.sync.enabled else None
        if fresh is not None:
            try:
                # connect and authenticate before anything changes: a wrong host, port,
                # password or database is refused here, the running link left as it was
                fresh.ping()
            except BrokerUnavailable:
                fresh.close()
                raise
        if not self._lock.acquire(timeout=_LOCK_WAIT):
            if fresh is not None:
                fresh.close()
            raise BrokerBusy(
                f"the sync relay has been publishing for over {_LOCK_WAIT:.0f}s "
                "(is the broker stalled?); settings were not applied"
            )
        try:
            self.settings = new
            if reconnect:
                self._close()
                self._open(new.sync, fresh)
        finally:
            self._lock.release()
        self.relay.wake()

    # -- health ------------------------------------------------------------------------------

    def health(self) -> SyncHealth:
        depth = self.store.outbox_depth(self.region)
        if not self.settings.sync.enabled:
            return SyncHealth(
                state=SyncState.DISABLED,
                detail="sync is off",
                outbox_depth=depth,
                listener_connected=None,
                reconnects=self.reconnects,
            )
        sub = self.subscription
        listening = sub.stats.connected if sub else None
        problems = []
        try:
            if self.backend is not None:
                self.backend.ping()
        except BrokerUnavailable as exc:
            problems.append(str(exc))
        if sub is not None and not listening:
            problems.append("listener is reconnecting")
        if self.relay.refused:
            problems.append(f"broker refuses events: {self.relay.last_error}")
        rejection = self.relay.recent_rejection
        if rejection:
            problems.append(f"the broker refused an event for its content, dropped: {rejection}")
        if problems and listening is False and self.relay.last_error:
            state = SyncState.DOWN
        elif problems:
            state = SyncState.DEGRADED
        else:
            state = SyncState.OK
        return SyncHealth(
            state=state,
            detail="; ".join(problems) or "ok",
            outbox_depth=depth,
            listener_connected=listening,
            reconnects=self.reconnects,
        )
