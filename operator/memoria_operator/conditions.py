"""Status conditions, following the Kubernetes conventions.

``lastTransitionTime`` moves only when a condition's status flips; reason and message may change
without it. Condition types and reasons are constants here: they are what users grep for and
what the troubleshooting guide is organised by.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .kube import EventType

# types
READY = "Ready"
CONFIG_VALID = "ConfigValid"
SECRETS_AVAILABLE = "SecretsAvailable"
DEPLOYMENT_AVAILABLE = "DeploymentAvailable"
LEADERSHIP = "LeadershipValid"
HEALTHY = "Healthy"  # the operator's own probes (written by the leadership loop)
RESOURCES_OWNED = "ResourcesOwned"  # every object the region needs is the operator's to manage

# reasons
AVAILABLE = "Available"
PROGRESSING = "Progressing"
UNAVAILABLE = "Unavailable"
VALID = "Valid"
SECRET_MISSING = "SecretMissing"  # noqa: S105 - a condition reason
SECRET_KEY_MISSING = "SecretKeyMissing"  # noqa: S105
SECRET_INVALID = "SecretValueInvalid"  # noqa: S105
SECRETS_FOUND = "SecretsFound"
LEADER_CONFLICT = "LeaderConflict"
LEADERSHIP_OK = "LeadershipOK"
RECONCILE_ERROR = "ReconcileError"
PROBES_ANSWER = "ProbesAnswer"
UNHEALTHY = "Unhealthy"
NOT_PROBED = "NotProbedYet"
CONFLICT = "Conflict"
OWNED = "Owned"

# what Ready sums up, in the order its reason is taken from the first that fails
READY_INPUTS = (CONFIG_VALID, SECRETS_AVAILABLE, RESOURCES_OWNED, DEPLOYMENT_AVAILABLE, HEALTHY)


def now() -> str:
    return wall_before(0.0)


def wall_before(seconds: float) -> str:
    """The wall-clock time ``seconds`` ago, as a condition timestamp."""
    moment = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=seconds)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(
    type_: str, ok: bool | None, reason: str, message: str, generation: int
) -> dict[str, Any]:
    status = "Unknown" if ok is None else ("True" if ok else "False")
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": now(),
    }


def merge(existing: list[dict[str, Any]], updates: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``existing`` with ``updates`` applied by type, keeping lastTransitionTime of conditions
    whose status did not change; order: existing types first, then new ones."""
    by_type = {c["type"]: dict(c) for c in existing}
    order = [c["type"] for c in existing]
    for new in updates:
        old = by_type.get(new["type"])
        merged = dict(new)
        if old is not None and old.get("status") == new["status"]:
            merged["lastTransitionTime"] = old.get("lastTransitionTime", new["lastTransitionTime"])
        if old is None:
            order.append(new["type"])
        by_type[new["type"]] = merged
    return [by_type[t] for t in order]


def find(conditions: list[dict[str, Any]], type_: str) -> dict[str, Any] | None:
    return next((c for c in conditions if c.get("type") == type_), None)


def ready(conditions: list[dict[str, Any]], generation: int) -> dict[str, Any]:
    """The Ready condition from the detail conditions present: False with the reason of the
    first that is not True, else True. The reconciler and the leadership loop both write detail
    conditions; each recomputes Ready from the whole, freshly read set, so neither can leave a
    Ready that contradicts the other's findings."""
    for type_ in READY_INPUTS:
        found = find(conditions, type_)
        if found is not None and found.get("status") != "True":
            return condition(
                READY, False, str(found["reason"]), str(found.get("message", "")), generation
            )
    if find(conditions, HEALTHY) is None:
        # an available Deployment is not yet a region that answers: Ready waits for the
        # leadership loop's first probe (it runs every retry interval)
        return condition(
            READY, False, NOT_PROBED, "waiting for the operator's first probe", generation
        )
    return condition(READY, True, AVAILABLE, "region is running", generation)


# Ready reasons that are a normal step, not a problem: no Event when Ready turns to them
QUIET_REASONS = (PROGRESSING, NOT_PROBED)


def ready_changed(before: dict[str, Any] | None, after: dict[str, Any]) -> bool:
    """Whether a write of Ready is worth an Event: its status or reason changed, to anything
    but a quiet reason (a rollout under way, the first probe pending)."""
    old = ((before or {}).get("status"), (before or {}).get("reason"))
    return old != (after["status"], after["reason"]) and after["reason"] not in QUIET_REASONS


def ready_event(ready: dict[str, Any]) -> tuple[EventType, str, str]:
    """(type, reason, message) of the Event for a Ready condition worth one: Normal "Ready" when
    it is True, else a Warning with its reason."""
    if ready["status"] == "True":
        return "Normal", "Ready", str(ready["message"])
    return "Warning", str(ready["reason"]), str(ready["message"])
