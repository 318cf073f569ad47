"""The coordinator wires store, backend and privacy filter into one region's sync.

Outbound: a write stores its event in the outbox in the same transaction (if sync is on and the
memory is inside the privacy range); the relay thread publishes the outbox in order and deletes
what the broker accepted. A broker outage never blocks or fails a write, and never loses its
event: the relay retries with backoff and drains the queue when the broker is back. Events are
filtered once more at relay time, so a range narrowed after the write still holds.

Inbound: the subscription hands over batches with journal positions; each batch is filtered
(own origin, privacy, malformed) and applied in one store transaction together with the new
cursor, so a crash between "applied" and "acknowledged" cannot happen.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import (
    BrokerBusy,
    BrokerUnavailable,
    EventFormatError,
    EventRejected,
    StoreUnavailable,
)
from ..metrics import RuntimeMetrics
from ..privacy import PrivacyRange
from ..settings import MemoriaSettings, SyncSettings
from ..store import (
    UNKNOWN_AS_OF,
    DecrementOutcome,
    InboundOp,
    InboundResult,
    Memory,
    MemoryStore,
    memory_event,
)
from .base import BEGINNING, Backoff, Subscription, SyncBackend
from .events import Action, Delivery, EntityType, SyncEvent

log = logging.getLogger("memoria.sync")

BackendFactory = Callable[[SyncSettings], SyncBackend]
_INBOX_RETENTION = dt.timedelta(days=7)
_LOCK_WAIT = 10.0  # seconds a live switch or a stop waits for a publish in flight
_CONNECTION_FIELDS = ("enabled", "backend", "connection_url", "channel", "table")


def _default_factory(settings: SyncSettings) -> SyncBackend:
    from . import create_backend

    return create_backend(settings)


def _number(payload: dict[str, Any], name: str, default: float | None) -> float:
    value = payload.get(name, default)
    if value is None:
        raise EventFormatError(f"payload.{name} is missing")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise EventFormatError(f"payload.{name} must be a number")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise EventFormatError(f"payload.{name} must be a finite number")
    return number


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise EventFormatError(f"{name} must be a string")
    if "\x00" in value:
        raise EventFormatError(f"{name} must not contain NUL characters")
    return value


def memory_from_payload(payload: dict[str, Any], event: SyncEvent) -> Memory:
    """The memory an inbound create/update carries; EventFormatError if the payload is off."""
    version = payload.get("version")
    if version is None:
        # a peer speaking the guide's plain contract: order its writes by their time
        version = int(event.created_at.timestamp() * 1_000_000)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise EventFormatError("payload.version must be a positive integer")
    as_of = payload.get("x_as_of", UNKNOWN_AS_OF)
    now = event.created_at.isoformat()
    return Memory(
        id=_text(event.entity_id, "entity_id"),
        namespace=_text(event.namespace, "namespace"),
        text=_text(payload.get("text"), "payload.text"),
        x_coord=_number(payload, "x_coord", 0.0),
        y_coord=_number(payload, "y_coord", None),
        z_coord=_number(payload, "z_coord", 0.0),
        created_at=str(payload.get("created_at") or now),
        updated_at=str(payload.get("updated_at") or now),
        version=version,
        origin=event.origin,
        x_as_of=as_of if isinstance(as_of, str) and len(as_of) <= 10 else UNKNOWN_AS_OF,
    )


@dataclass
class SyncHealth:
    state: str  # ok | degraded | down | disabled
    detail: str
    outbox_depth: int
    listener_connected: bool | None
    reconnects: int


class SyncCoordinator:
    def __init__(
        self,
        settings: MemoriaSettings,
        store: MemoryStore,
        metrics: RuntimeMetrics | None = None,
        backend_factory: BackendFactory = _default_factory,
    ) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics or RuntimeMetrics()
        self.backend_factory = backend_factory
        self.backend: SyncBackend | None = None
        self.subscription: Subscription | None = None
        self._backend_lock = threading.RLock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._relay: threading.Thread | None = None
        self._flush_deadline = 0.0
        self._last_publish_error: str | None = None
        self._reconnects_before = 0  # listener reconnects of subscriptions already closed
        self._last_prune = 0.0
        #: called with each decrement outcome applied from a peer (for logs, metrics, tests)
        self.on_remote_decrement: Callable[[DecrementOutcome], None] | None = None
        self.metrics.track_outbox(lambda: float(self.store.outbox_depth(self.region)))
        self.metrics.track_reconnects(lambda: float(self.reconnects))

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def region(self) -> str:
        return self.settings.region

    @property
    def privacy(self) -> PrivacyRange:
        return PrivacyRange(*self.settings.privacy_range)

    @property
    def reconnects(self) -> int:
        sub = self.subscription
        return self._reconnects_before + (sub.stats.reconnects if sub else 0)

    def start(self) -> None:
        with self._backend_lock:
            self._open(self.settings.sync)
        self._relay = threading.Thread(target=self._relay_loop, name="sync-relay", daemon=True)
        self._relay.start()

    def stop(self, flush_timeout: float = 5.0) -> None:
        """Stop: try to relay what is queued for up to ``flush_timeout`` s; the rest stays in
        the outbox for the next start. Then close the listener and the broker connections."""
        self._flush_deadline = time.monotonic() + flush_timeout
        self._stopping.set()
        self._wake.set()
        if self._relay is not None:
            self._relay.join(flush_timeout + 10)
        if self._backend_lock.acquire(timeout=_LOCK_WAIT):
            try:
                self._close()
            finally:
                self._backend_lock.release()
        else:  # the relay is stuck inside a publish (a stalled broker): leave it behind
            log.warning("sync: the relay is stuck publishing; closing without it")

    def _open(self, sync: SyncSettings, backend: SyncBackend | None = None) -> None:
        if not sync.enabled:
            return
        self.backend = backend or self.backend_factory(sync)
        if sync.realtime_replication:
            # the cursor key names this region and the journal: regions sharing one store
            # keep separate cursors, and a switched backend starts a cursor of its own
            source = f"{self.region}|{self.backend.source_id}"
            after = self.store.get_cursor(source) or BEGINNING
            self.subscription = self.backend.subscribe_batches(
                lambda batch: self._on_batch(batch, source), after=after
            )
            log.info("sync: subscribed to %s (resuming after %s)", self.backend.source_id, after)

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
        untouched, so nothing queued is lost across the switch. Raises BrokerBusy, changing
        nothing, if the relay is stuck inside a publish."""
        old = self.settings.sync
        reconnect = any(getattr(old, f) != getattr(new.sync, f) for f in _CONNECTION_FIELDS)
        reconnect |= old.realtime_replication != new.sync.realtime_replication
        fresh = self.backend_factory(new.sync) if reconnect and new.sync.enabled else None
        if not self._backend_lock.acquire(timeout=_LOCK_WAIT):
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
            self._backend_lock.release()
        self._wake.set()

    # -- outbound ----------------------------------------------------------------------------

    def _share(self, memory: Memory) -> bool:
        return self.settings.sync.enabled and self.privacy.allows(memory.y_coord)

    def _created(self, memory: Memory) -> SyncEvent | None:
        return memory_event(Action.CREATE, memory, self.region) if self._share(memory) else None

    def _updated(self, before: Memory, after: Memory) -> SyncEvent | None:
        if self._share(after):
            return memory_event(Action.UPDATE, after, self.region)
        if self._share(before):
            # it left the shareable range: peers must drop their copy; send no content
            return self._withdrawal(after)
        return None

    def _deleted(self, before: Memory) -> SyncEvent | None:
        return self._withdrawal(before, bump=1) if self._share(before) else None

    def _withdrawal(self, memory: Memory, bump: int = 0) -> SyncEvent:
        return SyncEvent(
            action=Action.DELETE,
            entity_type=EntityType.MEMORY,
            namespace=memory.namespace,
            entity_id=memory.id,
            payload={"id": memory.id, "version": memory.version + bump},
            origin=self.region,
        )

    def create_memory(self, **fields: Any) -> Memory:
        memory = self.store.create_memory(origin=self.region, make_event=self._created, **fields)
        self.metrics.writes.labels("create").inc()
        self._wake.set()
        return memory

    def update_memory(self, memory_id: str, changes: dict[str, Any]) -> Memory:
        memory = self.store.update_memory(
            memory_id, changes, origin=self.region, make_event=self._updated
        )
        self.metrics.writes.labels("update").inc()
        self._wake.set()
        return memory

    def delete_memory(self, memory_id: str) -> Memory:
        memory = self.store.delete_memory(memory_id, origin=self.region, make_event=self._deleted)
        self.metrics.writes.labels("delete").inc()
        self._wake.set()
        return memory

    def decrement_event(self, date: str, token: int) -> SyncEvent | None:
        if not self.settings.sync.enabled:
            return None
        return SyncEvent(
            action=Action.DECREMENT,
            entity_type=EntityType.SCHEDULE,
            namespace="_schedule",
            entity_id=date,
            payload={"date": date, "token": token, "region": self.region},
            origin=self.region,
        )

    def run_decrement(self, date: str, token: int) -> DecrementOutcome:
        outcome = self.store.run_decrement(
            date,
            token=token,
            region=self.region,
            make_event=lambda d: self.decrement_event(d, token),
        )
        self.metrics.decrements.labels(outcome.reason).inc()
        self._wake.set()
        return outcome

    def _relay_once(self) -> bool:
        """Publish one batch of the outbox; True if something was sent or dropped."""
        batch = self.store.outbox_batch(self.region)
        if not batch:
            return False
        with self._backend_lock:
            backend = self.backend
            if backend is None:
                return False  # sync switched off meanwhile: keep the queue
            # re-check the range under the lock: once a narrowing PATCH has returned, nothing
            # outside the new range goes out
            privacy = self.privacy
            events = [
                (r.event_id, r.body)
                for r in batch
                if r.y_coord is None or privacy.allows(r.y_coord)
            ]
            if len(events) < len(batch):
                self.metrics.dropped.labels("privacy_out").inc(len(batch) - len(events))
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
                self.metrics.dropped.labels("rejected").inc()
                log.error("sync: the broker refuses event %s for good (%s); dropped", event_id, exc)
        return sent

    def _relay_loop(self) -> None:
        backoff = Backoff(0.05, 5.0)
        while True:
            stopping = self._stopping.is_set()
            if stopping and time.monotonic() >= self._flush_deadline:
                return
            self._wake.clear()
            try:
                sent = self._relay_once()
            except BrokerUnavailable as exc:
                self.metrics.broker_errors.inc()
                if self._last_publish_error is None:
                    log.warning(
                        "sync: broker unavailable (%s); writes are kept in the outbox "
                        "and relayed when it is back",
                        exc,
                    )
                self._last_publish_error = str(exc)
                if stopping:
                    log.warning(
                        "sync: stopping with %d events kept in the outbox",
                        self.store.outbox_depth(self.region),
                    )
                    return
                self._wake.wait(backoff.next())
                continue
            except Exception:
                log.exception("sync: relay failed; retrying")
                self._wake.wait(backoff.next())
                continue
            if self._last_publish_error is not None:
                log.info("sync: broker reachable again; relaying the outbox")
                self._last_publish_error = None
            backoff.reset()
            if not sent:
                if stopping:
                    return
                self._maybe_prune()
                self._wake.wait(1.0)

    def _maybe_prune(self) -> None:
        if time.monotonic() - self._last_prune > 3600:
            self._last_prune = time.monotonic()
            try:
                self.store.prune_inbox(_INBOX_RETENTION)
            except Exception:
                log.exception("sync: pruning the inbox failed")

    # -- inbound -----------------------------------------------------------------------------

    def _classify(self, delivery: Delivery) -> InboundOp | None:
        event = delivery.event
        if event is None:
            self.metrics.dropped.labels("malformed").inc()
            log.warning("sync: skipping malformed event: %s (%r)", delivery.error, delivery.raw)
            return None
        self.metrics.received.inc()
        if event.origin == self.region:
            self.metrics.dropped.labels("own_origin").inc()
            return InboundOp(event.event_id, "skip")
        if event.action is Action.DECREMENT:
            if event.entity_type is not EntityType.SCHEDULE:
                self.metrics.dropped.labels("malformed").inc()
                return InboundOp(event.event_id, "skip")
            return InboundOp(event.event_id, "decrement", event)
        if event.entity_type is not EntityType.MEMORY:
            self.metrics.dropped.labels("malformed").inc()
            return InboundOp(event.event_id, "skip")
        if event.action is Action.DELETE:
            return InboundOp(event.event_id, "withdraw", event)
        try:
            memory = memory_from_payload(event.payload, event)
        except EventFormatError as exc:
            self.metrics.dropped.labels("malformed").inc()
            log.warning("sync: skipping event %s: %s", event.event_id, exc)
            return InboundOp(event.event_id, "skip")
        if not self.privacy.allows(memory.y_coord):
            # outside our range: never stored; a copy we hold from before is dropped
            self.metrics.dropped.labels("privacy_in").inc()
            return InboundOp(event.event_id, "withdraw", event)
        return InboundOp(event.event_id, "upsert", event, memory)

    def _on_batch(self, batch: list[Delivery], source: str) -> None:
        ops = [op for op in map(self._classify, batch) if op is not None]
        position = next((d.position for d in reversed(batch) if d.position is not None), None)
        try:
            result = self.store.apply_inbound(ops, source=source, position=position)
        except StoreUnavailable:
            raise  # the store is down: the batch is offered again after a backoff
        except Exception:
            # something in the batch the store refuses (it would refuse it on every retry):
            # apply event by event and skip only what fails, so the stream moves on
            log.exception("sync: a batch failed to apply; applying its events one by one")
            result = self._apply_one_by_one(ops, source, position)
        self.metrics.applied.inc(result.applied)
        if result.duplicates:
            self.metrics.dropped.labels("duplicate").inc(result.duplicates)
        if result.stale:
            self.metrics.dropped.labels("stale").inc(result.stale)
        for outcome in result.outcomes:
            self.metrics.decrements.labels(f"remote_{outcome.reason}").inc()
            if outcome.ran:
                log.info(
                    "sync: applied %s's decrement for %s (%d memories)",
                    outcome.last_by,
                    outcome.date,
                    outcome.rows,
                )
            if self.on_remote_decrement:
                self.on_remote_decrement(outcome)

    def _apply_one_by_one(
        self, ops: list[InboundOp], source: str, position: str | None
    ) -> InboundResult:
        total = InboundResult()
        for i, op in enumerate(ops):
            last = i == len(ops) - 1
            try:
                r = self.store.apply_inbound(
                    [op], source=source, position=position if last else None
                )
            except StoreUnavailable:
                raise
            except Exception as exc:
                self.metrics.dropped.labels("malformed").inc()
                log.error("sync: skipping event %s the store refuses: %s", op.event_id, exc)
                r = self.store.apply_inbound(
                    [InboundOp(op.event_id, "skip")],
                    source=source,
                    position=position if last else None,
                )
            total = InboundResult(
                total.applied + r.applied,
                total.duplicates + r.duplicates,
                total.skipped + r.skipped,
                total.stale + r.stale,
                [*total.outcomes, *r.outcomes],
            )
        if not ops and position is not None:
            total = self.store.apply_inbound([], source=source, position=position)
        return total

    # -- health ------------------------------------------------------------------------------

    def health(self) -> SyncHealth:
        depth = self.store.outbox_depth(self.region)
        sync = self.settings.sync
        if not sync.enabled:
            return SyncHealth("disabled", "sync is off", depth, None, self.reconnects)
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
        if problems and listening is False and self._last_publish_error:
            state = "down"
        elif problems:
            state = "degraded"
        else:
            state = "ok"
        return SyncHealth(state, "; ".join(problems) or "ok", depth, listening, self.reconnects)
