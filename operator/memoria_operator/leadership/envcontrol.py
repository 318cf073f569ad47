"""``spec.scheduler.control: env``: leadership for images that know nothing of our Lease.

A guide-conforming image reads ``DISABLE_SCHEDULERS`` once, when it starts. For such regions the
operator turns the Lease into that variable: ``false`` only in the Deployment of the region that
holds the Lease, ``true`` everywhere else. Changing it is a rollout, so a flip is ordered:

1. the old leader loses the Lease (a handover empties the holder) and its Deployment gets
   ``DISABLE_SCHEDULERS=true`` (phase ``Disabling``);
2. the operator waits until that rollout is complete, meaning no pod of an older template remains
   (phase ``Disabled``), or until the old region is presumed stopped: judged down past its
   failover bound with its grant expired, and its rollout still not done after
   ``spec.scheduler.rolloutTimeoutSeconds`` (its part of the cluster cannot roll it);
3. only then may anyone acquire the Lease (:func:`blocking`), and the new holder's Deployment gets
   ``DISABLE_SCHEDULERS=false`` (``Enabling``, then ``Enabled`` once rolled out).

The Lease stays the one source of truth with its fencing token; this module only says what the
Deployments should say and whether a rollout is done. Pure, except for nothing: the manager
reads the Deployments and pods, calls these functions and writes what they return.
"""

from __future__ import annotations

import copy
import datetime as dt
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from ..render import SCHEDULER_SWITCH, deployment_scheduler_on
from .lease import micro_time, parse_time

if TYPE_CHECKING:
    from ..kube import EventType
    from ..model import Region
    from .decide import GroupView


class SchedulerPhase(StrEnum):
    """``status.scheduler.phase`` of an env region."""

    ENABLED = "Enabled"
    ENABLING = "Enabling"
    DISABLED = "Disabled"
    DISABLING = "Disabling"


class SchedulerEvent(StrEnum):
    """The Event reason of each step of a flip."""

    DISABLING = "SchedulerDisabling"  # DISABLE_SCHEDULERS=true written
    DISABLED = "SchedulerDisabled"  # ... rolled out: no pod of the old template remains
    ENABLING = "SchedulerEnabling"  # DISABLE_SCHEDULERS=false written (the Lease holder)
    ENABLED = "SchedulerEnabled"  # ... rolled out
    PRESUMED_STOPPED = "SchedulerPresumedStopped"  # judged down, rollout never completed


_REACHED = {
    SchedulerPhase.DISABLING: SchedulerEvent.DISABLING,
    SchedulerPhase.DISABLED: SchedulerEvent.DISABLED,
    SchedulerPhase.ENABLING: SchedulerEvent.ENABLING,
    SchedulerPhase.ENABLED: SchedulerEvent.ENABLED,
}


@dataclass(frozen=True, kw_only=True)
class EnvScheduler:
    """One env region's scheduler switch as the API shows it now."""

    on: bool | None  # the Deployment's template says DISABLE_SCHEDULERS=false; None: no such
    rolled_out: bool  # no pod of an older template remains
    detail: str  # what the rollout is waiting for, or that it is done
    changed: dt.datetime | None = None  # when the operator last flipped it

    @property
    def phase(self) -> SchedulerPhase | None:
        if self.on is None:
            return None
        if self.on:
            return SchedulerPhase.ENABLED if self.rolled_out else SchedulerPhase.ENABLING
        return SchedulerPhase.DISABLED if self.rolled_out else SchedulerPhase.DISABLING

    @property
    def stopped(self) -> bool:
        """No pod of this region may be running its scheduler."""
        return self.on is not True and self.rolled_out


def _pod_on(pod: dict[str, Any]) -> bool | None:
    """A pod's own copy of the switch (None: a pod that followed the Lease instead)."""
    containers = (pod.get("spec") or {}).get("containers") or []
    return deployment_scheduler_on({"spec": {"template": {"spec": {"containers": containers}}}})


def rollout(deployment: dict[str, Any] | None, pods: list[dict[str, Any]]) -> tuple[bool, str]:
    """(done, why) for the Deployment's current template: done when every pod that may still
    run (terminating ones included) carries the template's switch and the Deployment
    controller has rolled the current generation out to all its pods."""
    wanted = bool(deployment_scheduler_on(deployment))
    live = [p for p in pods if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")]
    stale = sorted(p["metadata"]["name"] for p in live if _pod_on(p) is not wanted)
    if stale:
        return False, f"pod(s) of an older template remain: {', '.join(stale)}"
    if deployment is None:
        return True, "no Deployment and no pod"
    status = deployment.get("status") or {}
    generation = int((deployment.get("metadata") or {}).get("generation") or 0)
    if int(status.get("observedGeneration") or 0) < generation:
        return False, "the Deployment controller has not rolled the change out yet"
    replicas, updated = int(status.get("replicas") or 0), int(status.get("updatedReplicas") or 0)
    if replicas > updated:
        return False, f"{replicas - updated} of {replicas} pod(s) still run an older template"
    return True, "rolled out: no pod of an older template remains"


def observe(
    deployment: dict[str, Any] | None, pods: list[dict[str, Any]], status: dict[str, Any]
) -> EnvScheduler:
    """The switch of one env region from its Deployment, its pods and its own status."""
    done, detail = rollout(deployment, pods)
    try:
        changed = parse_time(((status.get("scheduler") or {}).get("lastChangeTime")) or None)
    except ValueError:
        changed = None
    return EnvScheduler(
        on=deployment_scheduler_on(deployment), rolled_out=done, detail=detail, changed=changed
    )


def wanted_on(region: Region, holder: str | None) -> bool:
    """The switch the region's Deployment should carry while ``holder`` holds the Lease."""
    return region.key == holder and region.may_lead


def presumed_stopped(view: GroupView, key: str, *, expired: bool) -> bool:
    """An env region whose rollout cannot complete is presumed stopped once it is judged down
    as a failover judges a leader (unhealthy past its bound, its grant expired) and its rollout
    has had ``spec.scheduler.rolloutTimeoutSeconds``."""
    region, state, health = view.regions.get(key), view.schedulers.get(key), view.health.get(key)
    if region is None or state is None or health is None or health.healthy or not expired:
        return False
    if view.mono - health.since < region.spec.failover.unhealthy_after_seconds:
        return False
    if state.on is True or state.changed is None:
        return False  # never told to stop: there is no rollout to time out
    waited = (view.now - state.changed).total_seconds()
    return waited >= region.spec.scheduler.rollout_timeout_seconds


def blocking(view: GroupView, new_holder: str | None, *, expired: bool) -> tuple[str, str] | None:
    """(region, why) of an env region other than ``new_holder`` whose scheduler may still run:
    nobody may acquire the Lease until it has stopped. None when nothing blocks."""
    for key in sorted(view.regions):
        region = view.regions[key]
        if key == new_holder or not region.env_control:
            continue
        state = view.schedulers.get(key)
        if state is None:
            return key, "its Deployment has not been read yet"
        if state.stopped or presumed_stopped(view, key, expired=expired):
            continue
        if state.on:
            return key, "DISABLE_SCHEDULERS=false is still in its Deployment"
        return key, f"DISABLE_SCHEDULERS=true is rolling out ({state.detail})"
    return None


def switch_patch(deployment: dict[str, Any], on: bool) -> dict[str, Any]:
    """A merge patch setting the Deployment's switch, valid only over the version read (its
    resourceVersion is a precondition: a Deployment changed meanwhile is a Conflict)."""
    containers = copy.deepcopy(deployment["spec"]["template"]["spec"]["containers"])
    env = containers[0].setdefault("env", [])
    value = "false" if on else "true"
    for entry in env:
        if entry.get("name") == SCHEDULER_SWITCH:
            entry.pop("valueFrom", None)
            entry["value"] = value
            break
    else:
        env.append({"name": SCHEDULER_SWITCH, "value": value})
    return {
        "metadata": {"resourceVersion": deployment["metadata"]["resourceVersion"]},
        "spec": {"template": {"spec": {"containers": containers}}},
    }


def rollout_estimate(region: Region) -> float:
    """How long enabling ``region`` takes, for the failover bound: nothing for a region that
    follows the Lease; for an env region its last measured rollout, else its rollout timeout."""
    if not region.env_control:
        return 0.0
    measured = (region.status.get("scheduler") or {}).get("lastRolloutSeconds")
    if isinstance(measured, int | float) and measured > 0:
        return float(measured)
    return float(region.spec.scheduler.rollout_timeout_seconds)


def failover_bound(
    view: GroupView, holder: str | None, *, lease_duration: float, retry_interval: float
) -> float | None:
    """The longest a failover away from ``holder`` may take, until the new leader's scheduler
    runs (docs/leadership.md): max(bound, Lease duration) + the old leader's rollout timeout
    (env) + the slowest eligible standby's rollout (env) + two retry intervals."""
    old = view.regions.get(holder or "")
    if old is None:
        return None
    standbys = [
        r
        for r in view.regions.values()
        if r.key != old.key and r.may_lead and r.spec.failover.eligible
    ]
    total = (
        max(float(old.spec.failover.unhealthy_after_seconds), lease_duration)
        + (float(old.spec.scheduler.rollout_timeout_seconds) if old.env_control else 0.0)
        + max((rollout_estimate(r) for r in standbys), default=0.0)
        + 2 * retry_interval
    )
    return round(total, 1)


def scheduler_status(
    region: Region, state: EnvScheduler, now: dt.datetime, last_phase: str | None
) -> tuple[dict[str, Any], list[tuple[EventType, str, str]]]:
    """(``status.scheduler``, Events as (type, reason, message)) for one env region: an Event
    when it reached a phase other than ``last_phase`` (the one last reported), with the
    rollout's duration once it is complete."""
    previous = region.status.get("scheduler") or {}
    phase = state.phase
    wanted: dict[str, Any] = {"control": "env", "message": state.detail}
    if state.on is not None:
        wanted["disableSchedulers"] = not state.on
    if phase is not None:
        wanted["phase"] = phase.value
    if state.changed is not None:
        wanted["lastChangeTime"] = micro_time(state.changed)
    if "lastRolloutSeconds" in previous:
        wanted["lastRolloutSeconds"] = previous["lastRolloutSeconds"]
    events: list[tuple[EventType, str, str]] = []
    if phase is not None and last_phase != phase.value:
        deployment = region.workload_name
        value = "false" if state.on else "true"
        if phase in (SchedulerPhase.DISABLED, SchedulerPhase.ENABLED) and state.changed:
            took = round(max(0.0, (now - state.changed).total_seconds()), 1)
            wanted["lastRolloutSeconds"] = took
            message = f"DISABLE_SCHEDULERS={value} rolled out to {deployment} in {took}s"
        else:
            message = f"DISABLE_SCHEDULERS={value} written to {deployment}: {state.detail}"
        events.append(("Normal", _REACHED[phase], message))
    return wanted, events


__all__ = [
    "EnvScheduler",
    "SchedulerEvent",
    "SchedulerPhase",
    "blocking",
    "failover_bound",
    "observe",
    "presumed_stopped",
    "rollout",
    "scheduler_status",
    "switch_patch",
    "wanted_on",
]
