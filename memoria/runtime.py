"""One region process: its parts built from the settings, started and stopped together.

The store (``database.connection_string``), the sync link to the peers (``sync.*``: backend,
outbox relay, inbound applier), the write service every local change goes through, the
decrement scheduler and, when ``leadership.lease_name`` is set, the watch of the scheduler
Lease. Live settings changes (``PATCH /settings``) are applied here, one at a time.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from enum import StrEnum
from typing import Any

from .leadership import LeaseWatcher
from .metrics import RuntimeMetrics
from .ports import Leadership, LeadershipSource
from .scheduler import DecrementScheduler
from .settings import MemoriaSettings, ReplicaPromotion, apply_updates, mask_url
from .store import MemoryStore
from .sync import create_backend
from .sync.applier import DEFER_AHEAD
from .sync.link import BackendFactory, SyncLink, SyncState
from .writes import WriteService

log = logging.getLogger("memoria")


class HealthState(StrEnum):
    """The ``status`` of ``GET /healthz`` (and the store's ``state`` in it)."""

    OK = "ok"
    DEGRADED = "degraded"  # serving, but sync or the Lease watch is impaired
    DOWN = "down"  # the store cannot be reached: answered with 503


class Runtime:
    def __init__(
        self,
        settings: MemoriaSettings,
        *,
        disable_schedulers: bool = False,
        backend_factory: BackendFactory = create_backend,
    ) -> None:
        self.settings = settings
        self.metrics = RuntimeMetrics()
        self.store = MemoryStore(settings.database.connection_string.get_secret_value())
        self.sync = SyncLink(settings, self.store, self.metrics, backend_factory)
        self.writes = WriteService(
            self.store, lambda: self.settings, self.metrics, written=self.sync.wake
        )
        standalone = settings.leadership.lease_name is None
        self.scheduler = DecrementScheduler(
            self.writes,
            lambda: self.settings,
            self.metrics,
            leadership=Leadership(leading=standalone, token=0),
            force_disabled=disable_schedulers,  # --disable-schedulers
        )
        self.lease: LeaseWatcher | None = None
        if standalone:
            self.metrics.leader.set(1)
        else:
            self.lease = LeaseWatcher(settings.leadership, self._leadership_changed)
            # peers' decrements are checked against the Lease this region watches
            self.sync.applier.lease_facts = self.lease.facts
            if (settings.leadership.identity or "").count("/") == 2:
                # a group across clusters (<cluster>/<namespace>/<name>): this cluster's Lease
                # learns a new leader's token a round after its decrement may arrive
                self.sync.applier.defer_ahead = DEFER_AHEAD
        self.sync.may_promote = self._may_promote_broker
        self._settings_lock = threading.Lock()
        self.started = False
        self.metrics.track_last_decrement(self._last_decrement_timestamp)

    def _leadership_changed(self, leadership: Leadership) -> None:
        # first a peer's decrement kept because its token was ahead of our Lease: if this
        # region now leads, its catch-up must find the dates the previous leader already ran
        try:
            self.sync.applier.retry_deferred()
        except Exception:  # the store is down: the next change of the Lease tries again
            log.exception("sync: deferred decrements not applied yet")
        self.scheduler.set_leadership(leadership)
        # a new leader may now promote its replica broker: relay the queue at once, not
        # after the relay's backoff
        self.sync.wake()

    def _may_promote_broker(self) -> bool:
        lead = self.scheduler.leadership
        return (
            self.settings.sync.replica_promotion is ReplicaPromotion.LEADER
            and lead.source is LeadershipSource.LEASE
            and lead.leading
        )

    def _last_decrement_timestamp(self) -> float:
        raw = self.store.metadata().get("last_decrement_at") or ""
        return dt.datetime.fromisoformat(raw).timestamp() if raw else 0.0

    def start(self) -> None:
        log.info(
            "region %s: store %s, sync %s (%s), privacy [%d, %d], decrement at midnight %s%s",
            self.settings.region,
            self.store.url_for_humans,
            "on" if self.settings.sync.enabled else "off",
            f"{self.settings.sync.backend.value} {mask_url(self.settings.sync.connection)}".strip(),
            *self.settings.privacy_range,
            self.settings.decrement_tz,
            " (schedulers disabled)" if self.scheduler.disabled else "",
        )
        self.sync.start()
        if self.lease is not None:
            self.lease.start()
        self.scheduler.start()
        self.started = True

    def stop(self, flush_timeout: float = 5.0) -> None:
        """Scheduler first (no decrement starts during shutdown), then the Lease watch, then
        sync (the outbox is flushed for up to ``flush_timeout`` s, the rest kept), then the
        store."""
        self.scheduler.stop()
        if self.lease is not None:
            self.lease.stop()
        self.sync.stop(flush_timeout)
        self.store.close()
        self.started = False

    def update_settings(self, updates: dict[str, Any]) -> MemoriaSettings:
        """Validate dotted-key updates against the current settings and apply them, one
        caller at a time (two concurrent PATCHes can never undo each other)."""
        with self._settings_lock:
            new = apply_updates(self.settings, updates)
            self._apply(new)
            return new

    def apply_settings(self, new: MemoriaSettings) -> None:
        with self._settings_lock:
            self._apply(new)

    def _apply(self, new: MemoriaSettings) -> None:
        self.sync.apply_settings(new)  # raises, changing nothing, if it cannot be applied
        self.settings = new
        self.scheduler.settings_changed()
        log.info(
            "settings applied: sync %s %s, privacy [%d, %d]",
            "on" if new.sync.enabled else "off",
            new.sync.backend.value,
            *new.privacy_range,
        )

    def _store_health(self) -> dict[str, Any]:
        try:
            self.store.ping()
        except Exception as exc:
            # whatever the driver raises, the store is unusable: /healthz reports it "down"
            # (answering 503) instead of failing itself
            return {
                "state": HealthState.DOWN,
                "url": self.store.url_for_humans,
                "error": str(exc)[:300],
            }
        return {"state": HealthState.OK, "url": self.store.url_for_humans}

    def _last_decrement(self) -> dict[str, Any]:
        """The last decrement the store recorded: which date, run by which region, when."""
        try:
            meta = self.store.metadata()
        except Exception:
            # the store section of /healthz already says why it cannot be read
            return {}
        return {
            "date": meta.get("last_decrement_date"),
            "by": meta.get("last_decrement_by"),
            "at": meta.get("last_decrement_at"),
        }

    def health(self) -> dict[str, Any]:
        store = self._store_health()
        sync = self.sync.health()
        scheduler = self.scheduler.status()
        leadership = self.lease.status() if self.lease else {"lease": None, "held": True}
        status: HealthState
        if store["state"] is HealthState.DOWN:
            status = HealthState.DOWN
        elif sync.state in (SyncState.DEGRADED, SyncState.DOWN) or (
            self.lease and not self.lease.connected
        ):
            status = HealthState.DEGRADED
        else:
            status = HealthState.OK
        return {
            "status": status,
            "region": self.settings.region,
            "store": store,
            "sync": {
                "state": sync.state,
                "detail": sync.detail,
                "outbox_depth": sync.outbox_depth,
                "listener_connected": sync.listener_connected,
                "listener_reconnects": sync.reconnects,
            },
            "scheduler": scheduler,
            "leadership": leadership,
            "decrement": self._last_decrement() if store["state"] is HealthState.OK else {},
        }
