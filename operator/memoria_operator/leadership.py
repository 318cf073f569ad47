"""Leadership: one scheduler Lease per group, held by the operator for the leading region.

The Lease ``memoria-scheduler-<group>`` (in the regions' namespace) names the leading region in
``holderIdentity`` (``<namespace>/<name>``); ``leaseTransitions`` is the fencing token the
regions' stores check. Each tick (every retry interval) the manager looks at every group and
decides one step, purely (:func:`decide`), then performs it:

* **bootstrap**: no Lease yet: the one region with ``spec.role: leader`` gets it once healthy;
  two asking to lead get a ``LeaderConflict`` condition and nobody gets the Lease;
* **renew**: the holder is healthy: ``renewTime`` moves forward every renew interval;
* **switchover** (promote annotation or ``POST /admin/promote``): first the Lease is released
  (holder emptied, the target remembered in annotations), then, once the old leader says its
  scheduler stopped (its ``/healthz``) or the grant it saw has expired, the target acquires it.
  At no instant do two regions hold a valid grant;
* **failover**: the holder has been unhealthy for its ``unhealthyAfterSeconds`` and its grant has
  expired (it is no longer renewed once unhealthy): the best healthy eligible standby (priority,
  then name) acquires it. No automatic failback;
* **fencing by hand**: ``memoria.arcafutura.io/fenced=true`` moves leadership away (switchover
  steps) and keeps the region from ever being chosen.

All state lives in the Lease and the regions' status, so an operator restarted mid-way picks up
exactly where the previous one stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

from memoria.contract import lease_name

from . import conditions as c
from .config import HANDOVER_ANNOTATION, REASON_ANNOTATION, OperatorConfig
from .health import Health, HealthTracker
from .kube import Conflict, Kube, path_for
from .liveness import LIVENESS
from .metrics import OperatorMetrics
from .model import Region

log = logging.getLogger("memoria_operator.leadership")

HANDOVER_FROM = HANDOVER_ANNOTATION.replace("handover-to", "handover-from")
HANDOVER_STARTED = HANDOVER_ANNOTATION.replace("handover-to", "handover-started")
HANDOVER_KEYS = (HANDOVER_ANNOTATION, HANDOVER_FROM, HANDOVER_STARTED)


def micro_time(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(raw: str | None) -> dt.datetime | None:
    if not raw:
        return None
    return dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))


@dataclass
class Ack:
    """The answer to one promote request: recorded in status so it is handled once."""

    value: str
    event_type: str
    reason: str
    message: str


@dataclass
class Decision:
    kind: str  # keep | renew | acquire | release | handover
    holder: str | None = None  # acquire: the new holder; handover: the target
    reason: str = ""  # Bootstrap | Switchover | Failover | Fenced | Released
    message: str = ""
    acks: dict[str, Ack] = field(default_factory=dict)
    conflict: list[str] = field(default_factory=list)
    unhealthy_for: float | None = None  # failover: how long the old holder was unhealthy


@dataclass
class GroupView:
    namespace: str
    group: str
    lease: dict[str, Any] | None
    regions: dict[str, Region]
    health: dict[str, Health]
    now: dt.datetime
    mono: float
    renew_interval: float

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


def _refusal(view: GroupView, region: Region, in_handover: bool) -> str | None:
    if region.fenced:
        return "it is fenced (memoria.arcafutura.io/fenced)"
    if not region.spec.scheduler.enabled:
        return "its scheduler is disabled (spec.scheduler.enabled: false)"
    if not view.healthy(region.key):
        h = view.health.get(region.key)
        return f"it is not healthy ({h.message if h else 'not probed yet'})"
    if in_handover:
        return "a handover is already in progress"
    return None


@dataclass(frozen=True)
class _LeaseFacts:
    holder: str | None
    expired: bool
    renewed: dt.datetime | None
    handover_to: str | None
    handover_from: str | None
    reason: str | None

    @property
    def in_handover(self) -> bool:
        return bool(self.handover_to) and self.holder is None


def _facts(view: GroupView) -> _LeaseFacts:
    spec = (view.lease or {}).get("spec") or {}
    annotations = ((view.lease or {}).get("metadata") or {}).get("annotations") or {}
    duration = float(spec.get("leaseDurationSeconds") or 0)
    renewed = parse_time(spec.get("renewTime"))
    return _LeaseFacts(
        holder=spec.get("holderIdentity") or None,
        expired=renewed is None or view.now >= renewed + dt.timedelta(seconds=duration),
        renewed=renewed,
        handover_to=annotations.get(HANDOVER_ANNOTATION) or None,
        handover_from=annotations.get(HANDOVER_FROM) or None,
        reason=annotations.get(REASON_ANNOTATION) or None,
    )


def _request_order(value: str | None) -> tuple[int, float, str]:
    """Newest first: values that are numbers (``date +%s``, what /admin/promote writes) compare
    as numbers and rank above free-form values, which compare as text."""
    try:
        return 1, float(value or ""), ""
    except ValueError:
        return 0, 0.0, value or ""


def _answer_promotions(view: GroupView, facts: _LeaseFacts) -> tuple[dict[str, Ack], Region | None]:
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
        value = region.promote_request or ""
        if region.key == facts.holder:
            acks[region.key] = Ack(
                value, "Normal", "AlreadyLeader", f"{region.key} already holds the Lease"
            )
            continue
        why = _refusal(view, region, facts.in_handover)
        if why is None and target is not None:
            why = f"a newer request from {target.key} won"
        if why is not None:
            acks[region.key] = Ack(
                value, "Warning", "PromotionRefused", f"promotion of {region.key} refused: {why}"
            )
            continue
        target = region
        acks[region.key] = Ack(
            value, "Normal", "SwitchoverStarted", f"switchover to {region.key} requested ({value})"
        )
    return acks, target


def _continue_handover(view: GroupView, facts: _LeaseFacts) -> Decision:
    new = view.regions.get(facts.handover_to or "")
    old = facts.handover_from
    reason = facts.reason or "Switchover"
    if new is None or _refusal(view, new, False) is not None:
        return Decision(
            "release",
            reason="Released",
            message=(
                f"handover to {facts.handover_to} abandoned: target gone or no longer eligible"
            ),
        )
    old_health = view.health.get(old or "")
    # the old leader confirmed its scheduler stopped, or the grant it saw ran out anyway
    stopped = (
        old not in view.regions
        or facts.expired
        or (old_health is not None and old_health.leading is False)
    )
    if stopped:
        return Decision(
            "acquire", new.key, reason, f"{new.key} takes over from {old} ({reason.lower()})"
        )
    return Decision("keep", message=f"waiting for {old} to stop its scheduler")


def _bootstrap(view: GroupView, target: Region | None) -> Decision:
    if target is not None:
        return Decision(
            "acquire", target.key, "Switchover", f"{target.key} was promoted before anyone led"
        )
    leaders = sorted(r.key for r in view.regions.values() if r.spec.role == "leader")
    if len(leaders) > 1:
        return Decision(
            "keep",
            conflict=leaders,
            message=(
                f"{len(leaders)} regions ask to lead ({', '.join(leaders)}); set spec.role: "
                "leader on exactly one; nobody gets the Lease until then"
            ),
        )
    if not leaders:
        return Decision(
            "keep",
            message=("no region has spec.role: leader; set it on one region, or promote one"),
        )
    if view.regions[leaders[0]].may_lead and view.healthy(leaders[0]):
        return Decision(
            "acquire",
            leaders[0],
            "Bootstrap",
            f"{leaders[0]} leads from the start (spec.role: leader)",
        )
    return Decision(
        "keep",
        message=f"waiting for the bootstrap leader {leaders[0]} to be healthy and allowed to lead",
    )


def _nobody_leads(view: GroupView, target: Region | None, why: str) -> Decision:
    """Nobody holds a valid grant: the promoted region if any, else the best standby."""
    if target is not None:
        return Decision("acquire", target.key, "Switchover", f"{why}; {target.key} was promoted")
    best = view.candidates(failover=True)
    if best:
        return Decision(
            "acquire", best[0].key, "Failover", f"{why}; {best[0].key} is the best healthy standby"
        )
    return Decision("keep", message=f"{why}; no healthy eligible region to lead")


def _with_holder(view: GroupView, facts: _LeaseFacts, target: Region | None) -> Decision:
    holder = facts.holder or ""
    current = view.regions.get(holder)
    if current is None:
        decision = _nobody_leads(view, target, f"holder {holder} no longer exists")
        if decision.kind == "keep":
            return Decision("release", reason="Released", message=decision.message)
        return decision
    if not current.may_lead:
        # fenced by hand, or its scheduler was switched off: it must not keep the Lease
        reason = "Fenced" if current.fenced else "Released"
        why = "is fenced" if current.fenced else "has its scheduler disabled"
        best = [target] if target is not None else view.candidates(failover=False, exclude=holder)
        if best:
            return Decision(
                "handover", best[0].key, reason, f"{holder} {why}; handing over to {best[0].key}"
            )
        return Decision(
            "release", reason=reason, message=f"{holder} {why} and no region can take over"
        )
    if target is not None:
        return Decision(
            "handover", target.key, "Switchover", f"switchover from {holder} to {target.key}"
        )
    if view.healthy(holder):
        due = (
            facts.renewed is None
            or (view.now - facts.renewed).total_seconds() >= view.renew_interval * 0.9
        )
        return Decision("renew" if due else "keep")
    health = view.health.get(holder)
    unhealthy_for = view.mono - health.since if health else 0.0
    if unhealthy_for >= current.spec.failover.unhealthy_after_seconds and facts.expired:
        best = view.candidates(failover=True, exclude=holder)
        if best:
            return Decision(
                "acquire",
                best[0].key,
                "Failover",
                f"{holder} unhealthy for {unhealthy_for:.1f}s "
                f"({health.message if health else 'not probed'}); {best[0].key} takes over",
                unhealthy_for=unhealthy_for,
            )
        return Decision("keep", message=f"{holder} is unhealthy and no standby is eligible")
    return Decision("keep", message=f"{holder} unhealthy for {unhealthy_for:.1f}s")


def decide(view: GroupView) -> Decision:
    """One step for one group. Pure: everything it needs is in ``view``."""
    facts = _facts(view)
    acks, target = _answer_promotions(view, facts)
    if facts.in_handover:
        decision = _continue_handover(view, facts)
    elif view.lease is None:
        decision = _bootstrap(view, target)
    elif facts.holder is None:
        decision = _nobody_leads(view, target, "nobody led")
    else:
        decision = _with_holder(view, facts, target)
    decision.acks = acks
    return decision


class LeadershipManager:
    def __init__(self, kube: Kube, config: OperatorConfig, metrics: OperatorMetrics) -> None:
        self.kube = kube
        self.config = config
        self.metrics = metrics
        self.regions: dict[str, dict[str, Any]] = {}
        self.deployments: dict[str, dict[str, Any]] = {}
        self.health = HealthTracker(config.health_probe_timeout_seconds)
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conflicts: set[str] = set()

    # -- inputs from kopf's watches ----------------------------------------------------------

    def observe_region(self, body: dict[str, Any], *, deleted: bool) -> None:
        key = f"{body['metadata']['namespace']}/{body['metadata']['name']}"
        if deleted or body["metadata"].get("deletionTimestamp"):
            self.regions.pop(key, None)
            self.health.forget(key)
        else:
            self.regions[key] = body
        self.wake()

    def observe_deployment(self, body: dict[str, Any], *, deleted: bool) -> None:
        key = f"{body['metadata']['namespace']}/{body['metadata']['name']}"
        if deleted:
            self.deployments.pop(key, None)
        else:
            self.deployments[key] = body

    def wake(self) -> None:
        """Run a tick soon; safe from kopf's worker threads and from the loop itself."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wake.set()
        else:
            loop.call_soon_threadsafe(self._wake.set)

    # -- the loop ----------------------------------------------------------------------------

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            while True:
                LIVENESS.beat()
                try:
                    await self.tick()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("leadership tick failed; retrying")
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.config.retry_interval_seconds)
        finally:
            await self.health.close()

    async def tick(self) -> None:
        regions: dict[tuple[str, str], dict[str, Region]] = {}
        for body in list(self.regions.values()):
            try:
                region = Region.from_body(body)
            except Exception as exc:  # one bad object must not stop the rest
                log.warning("skipping %s: %s", body["metadata"].get("name"), exc)
                continue
            regions.setdefault(region.group_key, {})[region.key] = region
        all_regions = [r for group in regions.values() for r in group.values()]
        checks = await asyncio.gather(
            *(
                self.health.check(r, self.deployments.get(f"{r.namespace}/{r.workload_name}"))
                for r in all_regions
            )
        )
        health = {r.key: h for r, h in zip(all_regions, checks, strict=True)}
        for (namespace, group), members in regions.items():
            await self.step(namespace, group, members, health)

    async def step(
        self, namespace: str, group: str, members: dict[str, Region], health: dict[str, Health]
    ) -> None:
        lease_path = path_for("coordination.k8s.io/v1", "Lease", namespace, lease_name(group))
        lease = await asyncio.to_thread(self.kube.get, lease_path)
        view = GroupView(
            namespace,
            group,
            lease,
            members,
            health,
            dt.datetime.now(dt.UTC),
            time.monotonic(),
            self.config.renew_interval_seconds,
        )
        decision = decide(view)
        if decision.kind != "keep":
            try:
                lease = await asyncio.to_thread(self._write_lease, view, decision)
            except Conflict:
                log.info("lease %s changed under us; deciding again", lease_path)
                self.wake()
                return
        await asyncio.to_thread(self._publish, view, decision, lease)

    # -- effects -----------------------------------------------------------------------------

    def _write_lease(self, view: GroupView, decision: Decision) -> dict[str, Any]:
        name = lease_name(view.group)
        now = micro_time(view.now)
        lease = view.lease or {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": name,
                "namespace": view.namespace,
                "labels": {"app.kubernetes.io/managed-by": "memoria-operator"},
            },
            "spec": {"leaseTransitions": 0},
        }
        spec = dict(lease.get("spec") or {})
        annotations = dict((lease.get("metadata") or {}).get("annotations") or {})
        spec["leaseDurationSeconds"] = math.ceil(self.config.lease_duration_seconds)
        transitions = int(spec.get("leaseTransitions") or 0)
        if decision.kind == "renew":
            spec["renewTime"] = now
        elif decision.kind == "acquire":
            spec.update(
                holderIdentity=decision.holder,
                acquireTime=now,
                renewTime=now,
                leaseTransitions=transitions + 1,
            )
            for key in HANDOVER_KEYS:
                annotations.pop(key, None)
            annotations[REASON_ANNOTATION] = decision.reason
        elif decision.kind in ("release", "handover"):
            # renewTime stays: it is when the old holder's grant runs out, as it sees it
            spec.pop("holderIdentity", None)
            spec["leaseTransitions"] = transitions + 1
            annotations[REASON_ANNOTATION] = decision.reason
            for key in HANDOVER_KEYS:
                annotations.pop(key, None)
            if decision.kind == "handover":
                old = (view.lease or {}).get("spec", {}).get("holderIdentity") or ""
                annotations.update(
                    {
                        HANDOVER_ANNOTATION: decision.holder or "",
                        HANDOVER_FROM: old,
                        HANDOVER_STARTED: now,
                    }
                )
        body = {
            **lease,
            "spec": spec,
            "metadata": {**(lease.get("metadata") or {}), "annotations": annotations},
        }
        path = path_for("coordination.k8s.io/v1", "Lease", view.namespace)
        if view.lease is None:
            written = self.kube.create(path, body)
        else:
            written = self.kube.replace(f"{path}/{name}", body)
        if decision.kind == "renew":
            self.metrics.renewed(view.namespace, view.group)
        else:
            self._log_transition(view, decision, int(spec["leaseTransitions"]))
        return written

    def _log_transition(self, view: GroupView, decision: Decision, token: int) -> None:
        old = ((view.lease or {}).get("spec") or {}).get("holderIdentity")
        log.info(
            "group %s/%s: %s (%s): %s [fencing token %d]",
            view.namespace,
            view.group,
            decision.kind,
            decision.reason,
            decision.message,
            token,
        )
        self.metrics.transitions.labels(view.namespace, view.group, decision.reason).inc()
        if decision.kind == "acquire":
            self.metrics.renewed(view.namespace, view.group)
            if decision.unhealthy_for is not None:
                self.metrics.failover_seconds.labels(view.namespace, view.group).observe(
                    decision.unhealthy_for
                )
        events = []
        if decision.kind == "acquire" and decision.holder:
            events.append(
                (
                    decision.holder,
                    "Normal",
                    "LeadershipAcquired",
                    f"{decision.message}; fencing token {token}",
                )
            )
        if old and old != decision.holder:
            kind = "Normal" if decision.reason == "Switchover" else "Warning"
            events.append(
                (
                    old,
                    kind,
                    "LeadershipReleased" if decision.kind != "acquire" else "LeadershipLost",
                    decision.message,
                )
            )
        for key, type_, reason, message in events:
            body = self.regions.get(key)
            if body is not None:
                self.kube.event(body, type_, reason, message)

    def _publish(self, view: GroupView, decision: Decision, lease: dict[str, Any] | None) -> None:
        """Write each region's leadership facts into its status (only what changed)."""
        spec = (lease or {}).get("spec") or {}
        annotations = ((lease or {}).get("metadata") or {}).get("annotations") or {}
        holder = spec.get("holderIdentity") or ""
        leadership = {
            "lease": lease_name(view.group),
            "holder": holder,
            "transitions": int(spec.get("leaseTransitions") or 0),
        }
        if lease is not None:
            leadership["lastTransitionTime"] = (
                (spec.get("acquireTime") if holder else annotations.get(HANDOVER_STARTED))
                or spec.get("acquireTime")
                or c.now()
            )
            reason = annotations.get(REASON_ANNOTATION)
            if reason:
                leadership["lastTransitionReason"] = reason
        self.metrics.set_holder(
            view.namespace,
            view.group,
            [r.name for r in view.regions.values()],
            holder.split("/", 1)[-1] if holder else None,
        )
        for key, region in view.regions.items():
            self._publish_region(view, decision, region, leadership, key == holder)

    def _publish_region(
        self,
        view: GroupView,
        decision: Decision,
        region: Region,
        leadership: dict[str, Any],
        leads: bool,
    ) -> None:
        h = view.health.get(region.key)
        ack = decision.acks.get(region.key)
        conflict = region.key in decision.conflict
        wanted: dict[str, Any] = {
            "role": "leader" if leads else "standby",
            "fenced": region.fenced,
            "leadership": {
                **leadership,
                **(
                    {"lastPromotion": ack.value}
                    if ack
                    else {
                        k: v
                        for k, v in (region.status.get("leadership") or {}).items()
                        if k == "lastPromotion"
                    }
                ),
            },
        }
        if h is not None:
            wanted["health"] = {"healthy": h.healthy, "since": h.since_wall, "message": h.message}
        if conflict:
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
        current = region.status
        existing = c.find(current.get("conditions") or [], c.LEADERSHIP)
        same_condition = (
            existing is not None
            and (existing.get("status"), existing.get("reason")) == (cond["status"], cond["reason"])
            and existing.get("message") == cond["message"]
        )
        unchanged = all(current.get(k) == v for k, v in wanted.items()) and same_condition
        if unchanged and ack is None:
            return

        def mutate(status: dict[str, Any]) -> None:
            status.update(wanted)
            status["conditions"] = c.merge(status.get("conditions") or [], [cond])

        body = self.regions.get(region.key)
        self.kube.update_status(region.namespace, region.name, mutate)
        if body is None:
            return
        if ack is not None:
            self.kube.event(body, ack.event_type, ack.reason, ack.message)
        if conflict and region.key not in self._conflicts:
            self.kube.event(body, "Warning", c.LEADER_CONFLICT, decision.message)
        if conflict:
            self._conflicts.add(region.key)
        else:
            self._conflicts.discard(region.key)
