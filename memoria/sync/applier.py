"""The inbound applier: what a region does with the batches its subscription hands over.

Each batch is filtered (own origin, namespace, privacy range, malformed or unsupported, and the
bounds of :mod:`.trust`: size, time, version, a decrement's date and fencing token) and
applied in one store transaction together with the new journal cursor, so a crash between
"applied" and "acknowledged" cannot happen. Memories outside this region's range are never
stored, and a copy held from before is dropped. A batch the store refuses is retried event by
event, so one bad event cannot hold up the stream.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import Any

from ..errors import EventFormatError, StoreUnavailable
from ..metrics import DropReason, RuntimeMetrics
from ..privacy import PrivacyRange
from ..settings import SyncSettings
from ..store import UNKNOWN_AS_OF, DecrementOutcome, InboundOp, InboundResult, Memory, MemoryStore
from .events import Action, Delivery, EntityType, SyncEvent
from .payload import memory_id_of, read_memory, version_of
from .signing import verified
from .trust import CLOCK_SKEW, LeaseFacts, Refusal, check_decrement, check_text, check_time

log = logging.getLogger("memoria.sync")
_LOG_EVERY = 60.0  # seconds between log lines of one refusal reason


def memory_from_event(event: SyncEvent) -> Memory:
    """The memory an inbound create/update carries (structured or flat payload);
    EventFormatError if it cannot be read."""
    facts = read_memory(event)
    now = event.created_at.isoformat()
    return Memory(
        id=facts.memory_id,
        namespace=event.namespace,
        text=facts.text,
        x_coord=facts.x_coord,
        y_coord=facts.y_coord,
        z_coord=facts.z_coord,
        created_at=facts.created_at or now,
        updated_at=facts.updated_at or now,
        version=facts.version,
        origin=event.origin or "",
        x_as_of=UNKNOWN_AS_OF if facts.x_as_of is None else facts.x_as_of,
    )


def memory_from_payload(payload: dict[str, Any], event: SyncEvent) -> Memory:
    """:func:`memory_from_event` for ``event`` carrying ``payload``."""
    if payload is not event.payload:
        event = SyncEvent(
            action=event.action,
            entity_type=event.entity_type,
            namespace=event.namespace,
            entity_id=event.entity_id,
            payload=payload,
            origin=event.origin,
            created_at=event.created_at,
            event_id=event.event_id,
        )
    return memory_from_event(event)


# in a group across clusters, a peer's decrement with a token ahead of this region's Lease by at
# most this much is kept in the store (not refused) until the Lease catches up; at most
# DEFER_MAX such events are kept, more are refused
DEFER_AHEAD = 16
DEFER_MAX = 64


class InboundApplier:
    def __init__(
        self,
        store: MemoryStore,
        metrics: RuntimeMetrics,
        *,
        region: str,
        sync: Callable[[], SyncSettings],
        today: Callable[[dt.timedelta], dt.date] | None = None,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.region = region
        self._sync = sync  # read per event: PATCH /settings applies live
        #: this region's date (its decrement zone and clock) that far ahead of now
        self._today = today or (lambda ahead: (dt.datetime.now(dt.UTC) + ahead).date())
        #: what this region knows of its group's Lease; the runtime sets it when it watches one
        self.lease_facts: Callable[[], LeaseFacts] = lambda: LeaseFacts(None)
        self._warned: dict[str, tuple[float, int]] = {}  # reason: (logged at, not logged since)
        #: called with each decrement outcome applied from a peer (for logs, metrics, tests)
        self.on_remote_decrement: Callable[[DecrementOutcome], None] | None = None
        #: how far ahead a token may be to be kept: 0 (refuse) unless the region belongs to a
        #: group across clusters (the runtime sets DEFER_AHEAD then); in one cluster the Lease
        #: and the leader's token never disagree, and a token ahead is a forgery
        self.defer_ahead = 0

    def _privacy(self) -> PrivacyRange:
        sync = self._sync()
        return PrivacyRange(sync.privacy_floor, sync.privacy_ceiling)

    def _skip(self, event: SyncEvent, reason: DropReason) -> InboundOp:
        self.metrics.dropped.labels(reason).inc()
        return InboundOp(event.event_id, "skip")

    def _refuse(self, event: SyncEvent, refusal: Refusal) -> InboundOp:
        """Skip an event a peer had no right to send, counted by reason; logged by id and
        origin only (its content may be a forger's, and large)."""
        self.metrics.dropped.labels(refusal.value).inc()
        self._warn(
            refusal.value,
            "sync: refusing %s event %s from %r: %s",
            event.action.value,
            event.event_id,
            (event.origin or "")[:64],
            refusal.value,
        )
        return InboundOp(event.event_id, "skip")

    def _warn(self, reason: str, message: str, *args: Any) -> None:
        """Log at most one line per reason a minute: a peer's flood of bad events must not
        flood the log too. The line after a quiet spell says how many were not logged."""
        now = time.monotonic()
        last, quiet = self._warned.get(reason, (-_LOG_EVERY, 0))
        if now - last < _LOG_EVERY:
            self._warned[reason] = (last, quiet + 1)
            return
        self._warned[reason] = (now, 0)
        suffix = f" ({quiet} more like it not logged)" if quiet else ""
        log.warning(message + suffix, *args)

    def _check_signature(self, event: SyncEvent) -> Refusal | None:
        sync = self._sync()
        key = sync.key
        if key is None:
            return None  # no group key: nothing to verify against
        ok = verified(event, key)
        if ok is None:
            return Refusal.UNSIGNED if sync.trust == "signed" else None
        return None if ok else Refusal.BAD_SIGNATURE

    def _check_decrement(self, event: SyncEvent) -> Refusal | None:
        lease = self.lease_facts()
        highest = 0
        if lease.transitions is None:
            highest = int(self.store.metadata().get("fencing_token") or 0)
        return check_decrement(
            event.payload, today=self._today(CLOCK_SKEW), lease=lease, highest_token=highest
        )

    def classify(self, delivery: Delivery) -> InboundOp | None:
        """What to do with one delivery; None for a payload too malformed to have an id.

        Never raises for what an event says: whatever this region cannot or must not apply is
        counted under its reason and skipped, so one odd event never stops the stream.
        """
        event = delivery.event
        if event is None:
            self._count_unread(delivery)
            return None
        self.metrics.received.inc()
        if event.origin == self.region:
            return self._skip(event, DropReason.OWN_ORIGIN)
        refusal = self._check_signature(event)
        if refusal is not None:
            return self._refuse(event, refusal)
        if event.action is Action.DECREMENT:
            if event.entity_type is not EntityType.SCHEDULE:
                return self._skip(event, DropReason.MALFORMED)
            refusal = self._check_decrement(event)
            if refusal is Refusal.FENCE and self._may_defer(event):
                # kept in the store (not marked seen): applied once the Lease catches up
                return InboundOp(event.event_id, "defer", event)
            if refusal is not None:
                return self._refuse(event, refusal)
            return InboundOp(event.event_id, "decrement", event)
        if event.entity_type is not EntityType.MEMORY or event.action is Action.THREAD_UPDATE:
            return self._skip(event, DropReason.UNSUPPORTED)  # thread.updated: no threads here
        if not self._sync().shares_namespace(event.namespace):
            return self._skip(event, DropReason.NAMESPACE)
        return self._classify_memory(event)

    def _may_defer(self, event: SyncEvent) -> bool:
        """Whether to keep a decrement whose token is ahead of this region's Lease: by at most
        :attr:`defer_ahead` (groups across clusters only: there the leader's new token reaches
        this cluster's Lease a round after its decrement may reach the broker), and while
        fewer than :data:`DEFER_MAX` are kept."""
        if not self._still_ahead(event):
            return False
        try:
            kept = len(self.store.deferred())
        except Exception:  # the store is down: refused like any other early token
            return False
        if kept >= DEFER_MAX:
            return False
        log.info(
            "sync: %s's decrement for %s carries token %s, ahead of this region's Lease: "
            "kept until the Lease catches up",
            event.origin,
            event.payload.get("date"),
            event.payload.get("token"),
        )
        return True

    def retry_deferred(self) -> None:
        """Apply the kept decrements the Lease now allows (called when its token moves)."""
        ops = []
        for event in self.store.deferred():
            refusal = self._check_decrement(event)
            if refusal is Refusal.FENCE and self._still_ahead(event):
                continue
            if refusal is not None:
                self.store.drop_deferred(event.event_id)
                self._refuse(event, refusal)
            else:
                ops.append(InboundOp(event.event_id, "decrement", event))
        if ops:
            self._count(self.store.apply_inbound(ops, source="deferred", position=None))

    def _still_ahead(self, event: SyncEvent) -> bool:
        """Whether the event's token may still become allowed: a little ahead of the Lease, or
        any token while the Lease was not read yet (a region replaying the broker's journal
        as it starts, before its Lease watch's first answer)."""
        if not self.defer_ahead:
            return False
        lease = self.lease_facts()
        token = event.payload.get("token")
        if not isinstance(token, int) or isinstance(token, bool):
            return False
        if lease.transitions is None:
            return True
        return lease.transitions < token <= lease.transitions + self.defer_ahead

    def _count_unread(self, delivery: Delivery) -> None:
        if delivery.reason == "foreign":
            return  # another channel's row in a shared journal: not ours to count
        if delivery.reason == "unsupported":
            self.metrics.dropped.labels(DropReason.UNSUPPORTED).inc()
            log.debug("sync: skipping an event: %s", delivery.error)
        elif delivery.reason == "oversized":
            self.metrics.dropped.labels(Refusal.OVERSIZED.value).inc()
            self._warn(
                "oversized", "sync: skipping an event %s (at %s)", delivery.error, delivery.position
            )
        else:
            self.metrics.dropped.labels(DropReason.MALFORMED).inc()
            self._warn(
                "malformed", "sync: skipping malformed event: %s (%r)", delivery.error, delivery.raw
            )

    def _classify_memory(self, event: SyncEvent) -> InboundOp:
        """:meth:`classify` for a memory event of a namespace this region exchanges."""
        now = dt.datetime.now(dt.UTC)
        try:
            if event.action is Action.DELETE:
                version = version_of(event)
                refusal = check_time(event.created_at, version, now)
                if refusal is not None:
                    return self._refuse(event, refusal)
                gone = memory_id_of(event)
                return InboundOp(event.event_id, "withdraw", event, memory_id=gone, version=version)
            memory = memory_from_event(event)
        except EventFormatError as exc:
            self._warn("malformed", "sync: skipping event %s: %s", event.event_id, exc)
            return self._skip(event, DropReason.MALFORMED)
        refusal = check_time(event.created_at, memory.version, now) or check_text(memory.text)
        if refusal is not None:
            return self._refuse(event, refusal)
        if not self._privacy().allows(memory.y_coord):
            # outside our range: never stored; a copy we hold from before is dropped
            self.metrics.dropped.labels(DropReason.PRIVACY_IN).inc()
            return InboundOp(
                event.event_id, "withdraw", event, memory_id=memory.id, version=memory.version
            )
        return InboundOp(event.event_id, "upsert", event, memory)

    def apply(self, batch: list[Delivery], source: str) -> None:
        """Apply one batch and advance ``source``'s cursor to its last position, atomically.

        Raises StoreUnavailable (nothing applied) so the subscription offers the batch again.
        """
        ops = [op for op in map(self.classify, batch) if op is not None]
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
        self._count(result)

    def _count(self, result: InboundResult) -> None:
        self.metrics.applied.inc(result.applied)
        if result.duplicates:
            self.metrics.dropped.labels(DropReason.DUPLICATE).inc(result.duplicates)
        if result.stale:
            self.metrics.dropped.labels(DropReason.STALE).inc(result.stale)
        if result.refused:
            self.metrics.dropped.labels(Refusal.FOREIGN_DELETE.value).inc(result.refused)
            self._warn(
                Refusal.FOREIGN_DELETE.value,
                "sync: refused %d delete(s) of memories another region wrote later",
                result.refused,
            )
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
                # refused for its content (a constraint, a value the database cannot hold):
                # it would be refused on every retry, so it is recorded as seen and skipped
                self.metrics.dropped.labels(DropReason.MALFORMED).inc()
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
                total.refused + r.refused,
            )
        if not ops and position is not None:
            total = self.store.apply_inbound([], source=source, position=position)
        return total
