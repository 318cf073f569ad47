"""The leadership rules: one pure step, :func:`decide`, for one group of regions.

Everything a step needs is in a :class:`GroupView` (the group's Lease as read, its regions, their
health, both clocks); the answer is a :class:`Decision`: what to do to the Lease
(:class:`~.lease.DecisionKind`), for whom and why, plus the answers to promote requests. No I/O
here: :mod:`.manager` reads, calls :func:`decide`, and writes.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal

from memoria.contract import FENCED_ANNOTATION

from ..health import Health
from ..model import Region
from .envcontrol import EnvScheduler, blocking, presumed_stopped
from .lease import DecisionKind, LeaseFacts, TransitionReason, read_lease

if TYPE_CHECKING:
    from ..kube import EventType

__all__ = [
    "Ack",
    "AckReason",
    "Decision",
    "DecisionKind",
    "GroupView",
    "TransitionReason",
    "decide",
]


class AckReason(StrEnum):
    """The Event reason that answers a promote request."""

    ALREADY_LEADER = "AlreadyLeader"
    PROMOTION_REFUSED = "PromotionRefused"
    SWITCHOVER_STARTED = "SwitchoverStarted"


@dataclass(kw_only=True)
class Ack:
    """The answer to one promote request: recorded in status so it is handled once."""

    value: str
    reason: AckReason
    message: str

    @property
    def event_type(self) -> EventType:
        return "Warning" if self.reason is AckReason.PROMOTION_REFUSED else "Normal"


@dataclass(kw_only=True)
class Decision:
    """One step for one group: what to do to its Lease, and what to tell its regions."""

    kind: DecisionKind
    holder: str | None = None  # acquire: the new holder; handover: the target
    reason: TransitionReason | Literal[""] = ""  # "": the holder does not change
    message: str = ""
    acks: dict[str, Ack] = field(default_factory=dict)
    conflict: list[str] = field(default_factory=list)
    unhealthy_for: float | None = None  # failover: how long the old holder was unhealthy
    presumed_stopped: list[str] = field(default_factory=list)  # env regions judged down


@dataclass(kw_only=True)
class GroupView:
    """One group as a step sees it: the Lease as read (None: none yet), its regions by key,
    their health, the wall clock (Lease times) and the monotonic one (health durations)."""

    namespace: str
    group: str
    lease: dict[str, Any] | None
    regions: dict[str, Region]
    health: dict[str, Health]
    now: dt.datetime
    mono: float
    renew_interval: float
    # control env: each such region's DISABLE_SCHEDULERS as its Deployment and pods say
    schedulers: dict[str, EnvScheduler] = field(default_factory=dict)

    def healthy(self, key: str) -> bool:
        h = self.health.get(key)
        return h is not None and h.healthy

    def candidates(self, *, failover: bool, exclude: str | None = None) -> list[Region]:
        found = [
            r
            for r in self.regions.values()
            if r.key != exclude
            and r.may_lead
            and self.healthy(r.key)
            and (r.spec.failover.eligible or not failover)
        ]
        return sorted(found, key=lambda r: (-r.spec.priority, r.key))


def _keep(message: str = "", *, conflict: list[str] | None = None) -> Decision:
    return Decision(kind=DecisionKind.KEEP, message=message, conflict=conflict or [])


def _acquire(
    holder: str, reason: TransitionReason, message: str, *, unhealthy_for: float | None = None
) -> Decision:
    return Decision(
        kind=DecisionKind.ACQUIRE,
        holder=holder,
        reason=reason,
        message=message,
        unhealthy_for=unhealthy_for,
    )


def _refusal(view: GroupView, region: Region, in_handover: bool) -> str | None:
    if region.fenced:
        return f"it is fenced ({FENCED_ANNOTATION})"
    if not region.spec.scheduler.enabled:
        return "its scheduler is disabled (spec.scheduler.enabled: false)"
    if not view.healthy(region.key):
        h = view.health.get(region.key)
        return f"it is not healthy ({h.message if h else 'not probed yet'})"
    if in_handover:
        return "a handover is already in progress"
    return None


def _request_order(value: str | None) -> tuple[int, float, str]:
    """Newest first: values that are numbers (``date +%s``, what /admin/promote writes) compare
    as numbers and rank above free-form values, which compare as text."""
    try:
        return 1, float(value or ""), ""
    except ValueError:
        return 0, 0.0, value or ""


def _answer(
    view: GroupView, facts: LeaseFacts, region: Region, target: Region | None
) -> tuple[AckReason, str]:
    """The answer to ``region``'s promote request, ``target`` being a newer one accepted."""
    if region.key == facts.holder:
        return AckReason.ALREADY_LEADER, f"{region.key} already holds the Lease"
    why = _refusal(view, region, facts.in_handover)
    if why is None and target is not None:
        why = f"a newer request from {target.key} won"
    if why is not None:
        return AckReason.PROMOTION_REFUSED, f"promotion of {region.key} refused: {why}"
    value = region.promote_request or ""
    return AckReason.SWITCHOVER_STARTED, f"switchover to {region.key} requested ({value})"


def _answer_promotions(view: GroupView, facts: LeaseFacts) -> tuple[dict[str, Ack], Region | None]:
    """Answer each new promote request once; the newest acceptable one becomes the target."""
    acks: dict[str, Ack] = {}
    target: Region | None = None
    pending = [
        r
        for r in view.regions.values()
        if r.promote_request
        and r.promote_request != (r.status.get("leadership") or {}).get("lastPromotion")
    ]
    for region in sorted(pending, key=lambda r: _request_order(r.promote_request), reverse=True):
        reason, message = _answer(view, facts, region, target)
        if reason is AckReason.SWITCHOVER_STARTED:
            target = region
        acks[region.key] = Ack(value=region.promote_request or "", reason=reason, message=message)
    return acks, target


def _blip(view: GroupView, new: Region, old: Region | None) -> bool:
    """Whether a handover's unhealthy target is waited for (up to its own failover bound)
    rather than given up. Two cases: a handover that involves a rollout (an env region on
    either side) lasts seconds on a machine busy starting pods, so a missed probe is expected;
    and an operator that has never seen the target answer (a new pod finishing its
    predecessor's switchover, whose watch has not delivered the target's Deployment yet) knows
    nothing against it. A target this operator has seen answer and then fail is given up at
    once, and the usual rules pick another leader."""
    if not new.may_lead:
        return False
    health = view.health.get(new.key)
    if health is None or health.healthy:
        return False
    rollout = new.env_control or (old is not None and old.env_control)
    if not rollout and health.last_ok is not None:
        return False
    return view.mono - health.since < new.spec.failover.unhealthy_after_seconds


def _continue_handover(view: GroupView, facts: LeaseFacts) -> Decision:
    new = view.regions.get(facts.handover_to or "")
    old = facts.handover_from
    reason = facts.reason or TransitionReason.SWITCHOVER
    old_region = view.regions.get(old or "")
    if new is not None and _blip(view, new, old_region):
        return _keep(f"waiting for {new.key} to answer again before it takes over")
    if new is None or _refusal(view, new, False) is not None:
        return Decision(
            kind=DecisionKind.RELEASE,
            reason=TransitionReason.RELEASED,
            message=(
                f"handover to {facts.handover_to} abandoned: target gone or no longer eligible"
            ),
        )
    if old_region is not None and old_region.env_control:
        # its image reads DISABLE_SCHEDULERS once and never sees the Lease: the rollout of
        # true (or its presumed death) is what stops it, checked for every env region by decide
        return _acquire(new.key, reason, f"{new.key} takes over from {old} ({reason.lower()})")
    old_health = view.health.get(old or "")
    # the old leader confirmed its scheduler stopped, or the grant it saw ran out anyway
    stopped = (
        old_region is None
        or facts.expired
        or (old_health is not None and old_health.leading is False)
    )
    if stopped:
        return _acquire(new.key, reason, f"{new.key} takes over from {old} ({reason.lower()})")
    return _keep(f"waiting for {old} to stop its scheduler")


def _bootstrap(view: GroupView, target: Region | None) -> Decision:
    if target is not None:
        return _acquire(
            target.key,
            TransitionReason.SWITCHOVER,
            f"{target.key} was promoted before anyone led",
        )
    leaders = sorted(r.key for r in view.regions.values() if r.spec.role == "leader")
    if len(leaders) > 1:
        return _keep(
            f"{len(leaders)} regions ask to lead ({', '.join(leaders)}); set spec.role: "
            "leader on exactly one; nobody gets the Lease until then",
            conflict=leaders,
        )
    if not leaders:
        return _keep("no region has spec.role: leader; set it on one region, or promote one")
    if view.regions[leaders[0]].may_lead and view.healthy(leaders[0]):
        return _acquire(
            leaders[0],
            TransitionReason.BOOTSTRAP,
            f"{leaders[0]} leads from the start (spec.role: leader)",
        )
    return _keep(f"waiting for the bootstrap leader {leaders[0]} to be healthy and allowed to lead")


def _restart(view: GroupView, target: Region | None, why: str) -> Decision:
    """A stale Lease: the bootstrap rules (spec.role), else the best standby, else release."""
    decision = _bootstrap(view, target)
    asked = any(r.spec.role == "leader" for r in view.regions.values())
    if decision.kind is DecisionKind.ACQUIRE or asked:
        # granted, or waiting for the one region asked to lead (or for a conflict to be fixed)
        return replace(decision, message=f"{why}; {decision.message}")
    decision = _nobody_leads(view, None, why)
    if decision.kind is DecisionKind.KEEP:
        return Decision(kind=DecisionKind.RELEASE, reason=TransitionReason.RELEASED, message=why)
    return decision


def _nobody_leads(view: GroupView, target: Region | None, why: str) -> Decision:
    """Nobody holds a valid grant: the promoted region if any, else the best standby."""
    if target is not None:
        return _acquire(
            target.key, TransitionReason.SWITCHOVER, f"{why}; {target.key} was promoted"
        )
    best = view.candidates(failover=True)
    if best:
        return _acquire(
            best[0].key,
            TransitionReason.FAILOVER,
            f"{why}; {best[0].key} is the best healthy standby",
        )
    return _keep(f"{why}; no healthy eligible region to lead")


def _with_holder(view: GroupView, facts: LeaseFacts, target: Region | None) -> Decision:
    holder = facts.holder or ""
    current = view.regions.get(holder)
    if current is not None and facts.holder_uid and current.uid and facts.holder_uid != current.uid:
        # the Lease outlived its holder: this region has the holder's name but was created
        # again (a reinstall, a namespace re-applied). The group starts over as at bootstrap,
        # honouring spec.role, with the fencing token still counting up from the old Lease.
        return _restart(view, target, f"holder {holder} was deleted and created again")
    if current is None:
        decision = _nobody_leads(view, target, f"holder {holder} no longer exists")
        if decision.kind is DecisionKind.KEEP:
            return Decision(
                kind=DecisionKind.RELEASE,
                reason=TransitionReason.RELEASED,
                message=decision.message,
            )
        return decision
    if not current.may_lead:
        # fenced by hand, or its scheduler was switched off: it must not keep the Lease
        reason = TransitionReason.FENCED if current.fenced else TransitionReason.RELEASED
        why = "is fenced" if current.fenced else "has its scheduler disabled"
        best = [target] if target is not None else view.candidates(failover=False, exclude=holder)
        if best:
            return Decision(
                kind=DecisionKind.HANDOVER,
                holder=best[0].key,
                reason=reason,
                message=f"{holder} {why}; handing over to {best[0].key}",
            )
        return Decision(
            kind=DecisionKind.RELEASE,
            reason=reason,
            message=f"{holder} {why} and no region can take over",
        )
    if target is not None:
        return Decision(
            kind=DecisionKind.HANDOVER,
            holder=target.key,
            reason=TransitionReason.SWITCHOVER,
            message=f"switchover from {holder} to {target.key}",
        )
    if view.healthy(holder):
        due = (
            facts.renewed is None
            or (view.now - facts.renewed).total_seconds() >= view.renew_interval * 0.9
        )
        return Decision(kind=DecisionKind.RENEW) if due else _keep()
    health = view.health.get(holder)
    unhealthy_for = view.mono - health.since if health else 0.0
    if unhealthy_for >= current.spec.failover.unhealthy_after_seconds and facts.expired:
        best = view.candidates(failover=True, exclude=holder)
        why = (
            f"{holder} unhealthy for {unhealthy_for:.1f}s "
            f"({health.message if health else 'not probed'}); {best[0].key if best else ''}"
        )
        if best and current.env_control:
            # its scheduler stops only when its Deployment is rolled: empty the holder first
            return Decision(
                kind=DecisionKind.HANDOVER,
                holder=best[0].key,
                reason=TransitionReason.FAILOVER,
                message=f"{why} takes over once {holder}'s scheduler has stopped",
                unhealthy_for=unhealthy_for,
            )
        if best:
            return _acquire(
                best[0].key,
                TransitionReason.FAILOVER,
                f"{why} takes over",
                unhealthy_for=unhealthy_for,
            )
        return _keep(f"{holder} is unhealthy and no standby is eligible")
    return _keep(f"{holder} unhealthy for {unhealthy_for:.1f}s")


def decide(view: GroupView) -> Decision:
    """One step for one group. Pure: everything it needs is in ``view``."""
    facts = read_lease(view.lease, view.now)
    acks, target = _answer_promotions(view, facts)
    if facts.in_handover:
        decision = _continue_handover(view, facts)
    elif view.lease is None:
        decision = _bootstrap(view, target)
    elif facts.holder is None:
        decision = _nobody_leads(view, target, "nobody led")
    else:
        decision = _with_holder(view, facts, target)
    return replace(_ordered(view, facts, decision), acks=acks)


def _ordered(view: GroupView, facts: LeaseFacts, decision: Decision) -> Decision:
    """No grant while an env region other than the new holder may still run its scheduler
    (its DISABLE_SCHEDULERS=true not rolled out, and it is not presumed stopped): the flip is
    ordered whatever step asked for the grant."""
    if decision.kind is not DecisionKind.ACQUIRE:
        return decision
    waiting = blocking(view, decision.holder, expired=facts.expired)
    if waiting is not None:
        region, why = waiting
        return _keep(f"{decision.holder} is next, waiting for {region}'s scheduler to stop: {why}")
    presumed = [
        key
        for key, state in sorted(view.schedulers.items())
        if key != decision.holder
        and not state.stopped
        and presumed_stopped(view, key, expired=facts.expired)
    ]
    if presumed:
        note = ", ".join(presumed)
        return replace(
            decision,
            presumed_stopped=presumed,
            message=f"{decision.message}; {note} presumed stopped (down, rollout timed out)",
        )
    return decision
