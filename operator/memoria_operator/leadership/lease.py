"""The ``coordination.k8s.io/v1`` Lease as the operator reads and writes it, purely.

Two Leases use these helpers: each group's scheduler Lease (``memoria-scheduler-<group>``,
held on a region's behalf) and the operator's own election Lease. This module knows their
vocabulary and shape and nothing about who should hold them:

* RFC 3339 micro-times as the API server writes them, and when a grant runs out;
* the steps a decision may take on a Lease (:class:`DecisionKind`) and the reasons recorded on it
  (:class:`TransitionReason`, the ``transition-reason`` annotation users see in status);
* what a scheduler Lease says (:func:`read_lease`) and what it must say next (:func:`next_lease`,
  from the current Lease and a :class:`~.decide.Decision`);
* the spec changes both Leases share: renewing a grant and granting it to a new holder.

The annotations and the Lease name come from :mod:`memoria.contract`, shared with the runtime.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from memoria.contract import (
    HANDOVER_ANNOTATION,
    HANDOVER_FROM_ANNOTATION,
    HANDOVER_STARTED_ANNOTATION,
    HOLDER_UID_ANNOTATION,
    REASON_ANNOTATION,
    lease_name,
)

if TYPE_CHECKING:
    from .decide import Decision

API_VERSION = "coordination.k8s.io/v1"
MANAGED_BY = {"app.kubernetes.io/managed-by": "memoria-operator"}

# the names tests and older imports know them by
HANDOVER_FROM = HANDOVER_FROM_ANNOTATION
HANDOVER_STARTED = HANDOVER_STARTED_ANNOTATION
# a switchover in progress is these three together; any transition clears them
HANDOVER_KEYS = (HANDOVER_ANNOTATION, HANDOVER_FROM, HANDOVER_STARTED)


class DecisionKind(StrEnum):
    """What one leadership step does to a group's Lease."""

    KEEP = "keep"  # write nothing
    RENEW = "renew"  # move renewTime forward for the same holder
    ACQUIRE = "acquire"  # a new holder, a new fencing token
    RELEASE = "release"  # empty the holder, nobody named to follow
    HANDOVER = "handover"  # empty the holder, the target noted in annotations


class TransitionReason(StrEnum):
    """Why the holder last changed: the Lease's ``transition-reason`` annotation, status'
    ``lastTransitionReason`` and the transitions metric's ``reason`` label."""

    BOOTSTRAP = "Bootstrap"
    SWITCHOVER = "Switchover"
    FAILOVER = "Failover"
    FENCED = "Fenced"
    RELEASED = "Released"
    QUORUM_LOST = "QuorumLost"  # across clusters: the holder could not renew a majority

    @classmethod
    def recorded(cls, raw: str | None) -> TransitionReason | None:
        """The reason an annotation holds; None when it holds none this operator writes."""
        try:
            return cls(raw) if raw else None
        except ValueError:
            return None


# -- time ------------------------------------------------------------------------------------


def micro_time(moment: dt.datetime) -> str:
    """``moment`` as a Kubernetes MicroTime (RFC 3339 in UTC, microseconds, ``Z``)."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(raw: str | None) -> dt.datetime | None:
    """A Lease time field; None when it is absent or empty."""
    if not raw:
        return None
    return dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))


def grant_expired(spec: dict[str, Any], now: dt.datetime, *, default_duration: float = 0) -> bool:
    """True once ``renewTime + leaseDurationSeconds`` has passed (or was never set): the holder
    named in ``spec`` no longer has a valid grant. ``default_duration`` stands in for a missing
    duration."""
    renewed = parse_time(spec.get("renewTime"))
    duration = float(spec.get("leaseDurationSeconds") or default_duration)
    return renewed is None or now >= renewed + dt.timedelta(seconds=duration)


# -- spec changes both Leases share ----------------------------------------------------------


def renewed_spec(spec: dict[str, Any], *, now: dt.datetime, duration: float) -> dict[str, Any]:
    """``spec`` with the same holder's grant extended from ``now``."""
    return {**spec, "leaseDurationSeconds": math.ceil(duration), "renewTime": micro_time(now)}


def granted_spec(
    spec: dict[str, Any], *, holder: str, now: dt.datetime, duration: float
) -> dict[str, Any]:
    """``spec`` granted afresh to ``holder``: a new acquireTime and one more transition."""
    return {
        **renewed_spec(spec, now=now, duration=duration),
        "holderIdentity": holder,
        "acquireTime": micro_time(now),
        "leaseTransitions": int(spec.get("leaseTransitions") or 0) + 1,
    }


def empty_lease(
    namespace: str, name: str, *, labels: dict[str, str] | None = None
) -> dict[str, Any]:
    """A Lease nobody has held yet."""
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if labels is not None:
        metadata["labels"] = dict(labels)
    return {
        "apiVersion": API_VERSION,
        "kind": "Lease",
        "metadata": metadata,
        "spec": {"leaseTransitions": 0},
    }


# -- the scheduler Lease ---------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class LeaseFacts:
    """What a group's scheduler Lease says, as :func:`~.decide.decide` needs it."""

    holder: str | None
    expired: bool
    renewed: dt.datetime | None
    handover_to: str | None
    handover_from: str | None
    reason: TransitionReason | None
    holder_uid: str | None = None  # the uid of the MemoriaRegion the Lease was granted to

    @property
    def in_handover(self) -> bool:
        return bool(self.handover_to) and self.holder is None


def spec_of(lease: dict[str, Any] | None) -> dict[str, Any]:
    return (lease or {}).get("spec") or {}


def annotations_of(lease: dict[str, Any] | None) -> dict[str, str]:
    return ((lease or {}).get("metadata") or {}).get("annotations") or {}


def read_lease(lease: dict[str, Any] | None, now: dt.datetime) -> LeaseFacts:
    spec = spec_of(lease)
    annotations = annotations_of(lease)
    return LeaseFacts(
        holder=spec.get("holderIdentity") or None,
        expired=grant_expired(spec, now),
        renewed=parse_time(spec.get("renewTime")),
        handover_to=annotations.get(HANDOVER_ANNOTATION) or None,
        handover_from=annotations.get(HANDOVER_FROM) or None,
        reason=TransitionReason.recorded(annotations.get(REASON_ANNOTATION)),
        holder_uid=annotations.get(HOLDER_UID_ANNOTATION) or None,
    )


def next_lease(
    current: dict[str, Any] | None,
    decision: Decision,
    *,
    namespace: str,
    group: str,
    now: dt.datetime,
    duration: float,
) -> dict[str, Any]:
    """The scheduler Lease after ``decision``, from ``current`` (None: create it). A ``keep``
    writes nothing, so it has no next Lease (ValueError)."""
    if decision.kind is DecisionKind.KEEP:
        raise ValueError("a keep decision writes no Lease")
    lease = current or empty_lease(namespace, lease_name(group), labels=MANAGED_BY)
    spec = dict(spec_of(lease))
    annotations = dict(annotations_of(lease))
    spec["leaseDurationSeconds"] = math.ceil(duration)
    if decision.kind is DecisionKind.RENEW:
        spec = renewed_spec(spec, now=now, duration=duration)
    else:
        for key in HANDOVER_KEYS:
            annotations.pop(key, None)
        annotations[REASON_ANNOTATION] = decision.reason
    if decision.kind is DecisionKind.ACQUIRE:
        spec = granted_spec(spec, holder=decision.holder or "", now=now, duration=duration)
    elif decision.kind in (DecisionKind.RELEASE, DecisionKind.HANDOVER):
        # renewTime stays: it is when the old holder's grant runs out, as it sees it
        old = spec.pop("holderIdentity", None) or ""
        spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
        if decision.kind is DecisionKind.HANDOVER:
            annotations.update(
                {
                    HANDOVER_ANNOTATION: decision.holder or "",
                    HANDOVER_FROM: old,
                    HANDOVER_STARTED: micro_time(now),
                }
            )
    return {
        **lease,
        "spec": spec,
        "metadata": {**(lease.get("metadata") or {}), "annotations": annotations},
    }
