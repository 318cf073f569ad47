"""The inbound applier: what a region does with the batches its subscription hands over.

Each batch is filtered (own origin, privacy range, malformed) and applied in one store
transaction together with the new journal cursor, so a crash between "applied" and
"acknowledged" cannot happen. Memories outside this region's range are never stored, and a copy
held from before is dropped. A batch the store refuses is retried event by event, so one bad
event cannot hold up the stream.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

from ..errors import EventFormatError, StoreUnavailable
from ..metrics import DropReason, RuntimeMetrics
from ..privacy import PrivacyRange
from ..store import UNKNOWN_AS_OF, DecrementOutcome, InboundOp, InboundResult, Memory, MemoryStore
from .events import Action, Delivery, EntityType, SyncEvent

log = logging.getLogger("memoria.sync")


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


class InboundApplier:
    def __init__(
        self,
        store: MemoryStore,
        metrics: RuntimeMetrics,
        *,
        region: str,
        privacy: Callable[[], PrivacyRange],
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.region = region
        self._privacy = privacy  # read per event: PATCH /settings applies live
        #: called with each decrement outcome applied from a peer (for logs, metrics, tests)
        self.on_remote_decrement: Callable[[DecrementOutcome], None] | None = None

    def _skip(self, event: SyncEvent, reason: DropReason) -> InboundOp:
        self.metrics.dropped.labels(reason).inc()
        return InboundOp(event.event_id, "skip")

    def classify(self, delivery: Delivery) -> InboundOp | None:
        """What to do with one delivery; None for a payload too malformed to have an id."""
        event = delivery.event
        if event is None:
            self.metrics.dropped.labels(DropReason.MALFORMED).inc()
            log.warning("sync: skipping malformed event: %s (%r)", delivery.error, delivery.raw)
            return None
        self.metrics.received.inc()
        if event.origin == self.region:
            return self._skip(event, DropReason.OWN_ORIGIN)
        if event.action is Action.DECREMENT:
            if event.entity_type is not EntityType.SCHEDULE:
                return self._skip(event, DropReason.MALFORMED)
            return InboundOp(event.event_id, "decrement", event)
        if event.entity_type is not EntityType.MEMORY:
            return self._skip(event, DropReason.MALFORMED)
        if event.action is Action.DELETE:
            return InboundOp(event.event_id, "withdraw", event)
        try:
            memory = memory_from_payload(event.payload, event)
        except EventFormatError as exc:
            log.warning("sync: skipping event %s: %s", event.event_id, exc)
            return self._skip(event, DropReason.MALFORMED)
        if not self._privacy().allows(memory.y_coord):
            # outside our range: never stored; a copy we hold from before is dropped
            self.metrics.dropped.labels(DropReason.PRIVACY_IN).inc()
            return InboundOp(event.event_id, "withdraw", event)
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
            )
        if not ops and position is not None:
            total = self.store.apply_inbound([], source=source, position=position)
        return total
