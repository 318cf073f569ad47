"""One region process: store, sync coordinator, scheduler and Lease watcher, started together."""

from __future__ import annotations

import logging
import threading
from typing import Any

from .errors import StoreError
from .leadership import LeaseWatcher
from .metrics import RuntimeMetrics
from .scheduler import DecrementScheduler
from .settings import MemoriaSettings, apply_updates, mask_url
from .store import MemoryStore
from .sync.coordinator import SyncCoordinator

log = logging.getLogger("memoria")


class Runtime:
    def __init__(self, settings: MemoriaSettings, *, disable_schedulers: bool = False) -> None:
        self.settings = settings
        self.disable_schedulers_flag = disable_schedulers  # --disable-schedulers
        self.metrics = RuntimeMetrics()
        self.store = MemoryStore(settings.database.connection_string.get_secret_value())
        self.sync = SyncCoordinator(settings, self.store, self.metrics)
        self.scheduler = DecrementScheduler(self)
        self.lease: LeaseWatcher | None = None
        if settings.leadership.lease_name:
            self.lease = LeaseWatcher(settings.leadership, self.scheduler.set_leadership)
        else:
            self.metrics.leader.set(1)
        self._settings_lock = threading.Lock()
        self.started = False
        self.metrics.track_last_decrement(self._last_decrement_timestamp)

    def _last_decrement_timestamp(self) -> float:
        import datetime as dt

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

    def health(self) -> dict[str, Any]:
        try:
            self.store.ping()
            store = {"state": "ok", "url": self.store.url_for_humans}
        except (StoreError, Exception) as exc:
            store = {"state": "down", "url": self.store.url_for_humans, "error": str(exc)[:300]}
        sync = self.sync.health()
        scheduler = self.scheduler.status()
        leadership = self.lease.status() if self.lease else {"lease": None, "held": True}
        if store["state"] == "down":
            status = "down"
        elif sync.state in ("degraded", "down") or (self.lease and not self.lease.connected):
            status = "degraded"
        else:
            status = "ok"
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
        }
