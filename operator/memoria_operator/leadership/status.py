"""What the leadership loop tells users: each MemoriaRegion's status, and Events per transition.

Pure: these functions say what to write and which Events to post; :mod:`.manager` writes and
posts them. Per region the status holds ``role`` (the actual one, from the Lease), ``fenced``,
``leadership`` (the Lease, its holder, the fencing token, when and why it last changed, the last
promote request answered), ``health`` and the ``LeadershipValid`` condition.

Events, per step:

* a transition (anything but keep or renew): ``LeadershipAcquired`` on the new holder, and on the
  old one ``LeadershipLost`` (the Lease went to someone else) or ``LeadershipReleased`` (it was
  emptied first); Warning unless it was a switchover;
* a promote request: its answer (``SwitchoverStarted``, ``AlreadyLeader``, ``PromotionRefused``);
* two regions asking to lead at bootstrap: ``LeaderConflict``, once per region until resolved.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from memoria.contract import REASON_ANNOTATION, lease_name

from .. import conditions as c
from ..model import Role
from .decide import Decision, GroupView
from .lease import HANDOVER_STARTED, DecisionKind, TransitionReason, annotations_of, spec_of

if TYPE_CHECKING:
    from ..kube import EventType
    from ..model import Region


class TransitionEvent(StrEnum):
    """The Event reason posted on a region whose leadership changed."""

    ACQUIRED = "LeadershipAcquired"
    RELEASED = "LeadershipReleased"  # the Lease was emptied (release, or a handover's first half)
    LOST = "LeadershipLost"  # the Lease went straight to another region


@dataclass(frozen=True, kw_only=True)
class Event:
    """One core/v1 Event to post about the region ``regarding`` (its ``<namespace>/<name>``)."""

    regarding: str
    type: EventType
    reason: str
    message: str


def transition_events(before: dict[str, Any] | None, decision: Decision, token: int) -> list[Event]:
    """The Events of a transition written over the Lease ``before``; ``token`` is the new
    fencing token."""
    old = spec_of(before).get("holderIdentity")
    events = []
    if decision.kind is DecisionKind.ACQUIRE and decision.holder:
        events.append(
            Event(
                regarding=decision.holder,
                type="Normal",
                reason=TransitionEvent.ACQUIRED,
                message=f"{decision.message}; fencing token {token}",
            )
        )
    if old and old != decision.holder:
        events.append(
            Event(
                regarding=old,
                type="Normal" if decision.reason == TransitionReason.SWITCHOVER else "Warning",
                reason=(
                    TransitionEvent.LOST
                    if decision.kind is DecisionKind.ACQUIRE
                    else TransitionEvent.RELEASED
                ),
                message=decision.message,
            )
        )
    return events


def lease_status(group: str, lease: dict[str, Any] | None) -> dict[str, Any]:
    """``status.leadership`` as every region of the group shares it, from the Lease as written."""
    spec = spec_of(lease)
    annotations = annotations_of(lease)
    holder = spec.get("holderIdentity") or ""
    leadership: dict[str, Any] = {
        "lease": lease_name(group),
        "holder": holder,
        "transitions": int(spec.get("leaseTransitions") or 0),
    }
    if lease is not None:
        # held: when it was granted; emptied by a handover: when the handover started
        leadership["lastTransitionTime"] = (
            (spec.get("acquireTime") if holder else annotations.get(HANDOVER_STARTED))
            or spec.get("acquireTime")
            or c.now()
        )
        reason = annotations.get(REASON_ANNOTATION)
        if reason:
            leadership["lastTransitionReason"] = reason
    return leadership


def region_status(
    view: GroupView, decision: Decision, region: Region, leadership: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the status fields to set, the ``LeadershipValid`` condition) for one region."""
    h = view.health.get(region.key)
    ack = decision.acks.get(region.key)
    role: Role = "leader" if region.identity == leadership["holder"] else "standby"
    # the last promote request answered: this step's answer, else the one already recorded
    last_promotion = (
        {"lastPromotion": ack.value}
        if ack
        else {
            k: v for k, v in (region.status.get("leadership") or {}).items() if k == "lastPromotion"
        }
    )
    wanted: dict[str, Any] = {
        "role": role,
        "fenced": region.fenced,
        "leadership": {**leadership, **last_promotion},
    }
    if h is not None:
        wanted["health"] = {"healthy": h.healthy, "since": h.since_wall, "message": h.message}
    if region.key in decision.conflict:
        cond = c.condition(
            c.LEADERSHIP, False, c.LEADER_CONFLICT, decision.message, region.generation
        )
    else:
        cond = c.condition(
            c.LEADERSHIP,
            True,
            c.LEADERSHIP_OK,
            f"{leadership['holder'] or 'nobody'} holds {leadership['lease']}",
            region.generation,
        )
    return wanted, cond


def health_conditions(
    view: GroupView, region: Region, current: dict[str, Any]
) -> list[dict[str, Any]]:
    """``Healthy`` from the operator's probes, and ``Ready`` recomputed with it from the
    ``current`` status' other conditions; nothing before the region was first probed. A region
    that is Available but whose processes do not answer, or cannot watch their Lease, is not
    Ready."""
    h = view.health.get(region.key)
    if h is None:
        return []
    reason = c.PROBES_ANSWER if h.healthy else c.UNHEALTHY
    healthy = c.condition(c.HEALTHY, h.healthy, reason, h.message, region.generation)
    merged = c.merge(current.get("conditions") or [], [healthy])
    return [healthy, c.ready(merged, region.generation)]


def conditions_unchanged(current: dict[str, Any], conds: list[dict[str, Any]]) -> bool:
    """True when ``current`` already has each of ``conds`` (status, reason and message)."""
    existing = current.get("conditions") or []
    for cond in conds:
        found = c.find(existing, cond["type"])
        if found is None or (found.get("status"), found.get("reason"), found.get("message")) != (
            cond["status"],
            cond["reason"],
            cond["message"],
        ):
            return False
    return True


def status_unchanged(current: dict[str, Any], wanted: dict[str, Any], cond: dict[str, Any]) -> bool:
    """True when ``current`` already says all of ``wanted`` and ``cond`` (its time aside)."""
    existing = c.find(current.get("conditions") or [], c.LEADERSHIP)
    same_condition = (
        existing is not None
        and (existing.get("status"), existing.get("reason")) == (cond["status"], cond["reason"])
        and existing.get("message") == cond["message"]
    )
    return all(current.get(k) == v for k, v in wanted.items()) and same_condition


def region_events(decision: Decision, region_key: str, *, conflict_reported: bool) -> list[Event]:
    """The Events for one region after its status was written: the answer to its promote
    request, and a conflict not reported before."""
    events = []
    ack = decision.acks.get(region_key)
    if ack is not None:
        events.append(
            Event(regarding=region_key, type=ack.event_type, reason=ack.reason, message=ack.message)
        )
    if region_key in decision.presumed_stopped:
        events.append(
            Event(
                regarding=region_key,
                type="Warning",
                reason="SchedulerPresumedStopped",
                message=(
                    f"{region_key} is down and its rollout of DISABLE_SCHEDULERS=true did not "
                    "complete within spec.scheduler.rolloutTimeoutSeconds; its scheduler is "
                    f"presumed stopped ({decision.message})"
                ),
            )
        )
    if region_key in decision.conflict and not conflict_reported:
        events.append(
            Event(
                regarding=region_key,
                type="Warning",
                reason=c.LEADER_CONFLICT,
                message=decision.message,
            )
        )
    return events
