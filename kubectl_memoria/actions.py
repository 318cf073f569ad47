"""``promote``, ``fence`` and ``unfence``: the annotations users would write by hand, then the
Events and status that answer them.

Each action writes one annotation on the MemoriaRegion (the same one ``kubectl annotate`` would:
see docs/leadership.md), then waits, up to a timeout, for the operator's answer:

* promote: ``AlreadyLeader`` or ``LeadershipAcquired`` on the region (done), ``PromotionRefused``
  (refused, exit 1);
* fence: ``status.fenced`` true and, when the region held the Lease, the Lease gone elsewhere;
* unfence: ``status.fenced`` false.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from memoria.contract import (
    FENCED_ANNOTATION,
    KIND,
    PROMOTE_ANNOTATION,
    holder_identity,
    lease_name,
)

from .exits import Exit
from .kube import Cluster, NotFound
from .status import leases_path, regions_path

POLL = 0.25


@dataclass
class Outcome:
    action: str
    region: str
    namespace: str
    result: str  # done | refused | written | timed out
    message: str
    events: list[dict[str, Any]] = field(default_factory=list)
    exit: Exit = Exit.OK

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "region": self.region,
            "namespace": self.namespace,
            "result": self.result,
            "message": self.message,
            "events": [
                {
                    "reason": e.get("reason"),
                    "type": e.get("type"),
                    "object": (e.get("involvedObject") or {}).get("name"),
                    "message": e.get("message"),
                    "time": e.get("lastTimestamp") or e.get("eventTime"),
                }
                for e in self.events
            ],
        }


def region_events(cluster: Cluster, namespace: str) -> list[dict[str, Any]]:
    """Events about MemoriaRegions of ``namespace``, oldest first."""
    items: list[dict[str, Any]] = (
        cluster.get(
            f"/api/v1/namespaces/{namespace}/events",
            fieldSelector=f"involvedObject.kind={KIND}",
        ).get("items")
        or []
    )
    return sorted(items, key=lambda e: e.get("eventTime") or e.get("lastTimestamp") or "")


class _Watch:
    """New Events since construction, polled until ``settled`` says the answer is in."""

    def __init__(self, cluster: Cluster, namespace: str) -> None:
        self.cluster, self.namespace = cluster, namespace
        self.seen = {e["metadata"]["name"] for e in region_events(cluster, namespace)}
        self.new: list[dict[str, Any]] = []

    def poll(self) -> None:
        for e in region_events(self.cluster, self.namespace):
            if e["metadata"]["name"] not in self.seen:
                self.seen.add(e["metadata"]["name"])
                self.new.append(e)

    def on(self, region: str, *reasons: str) -> dict[str, Any] | None:
        for e in self.new:
            if (e.get("involvedObject") or {}).get("name") == region and e.get("reason") in reasons:
                return e
        return None

    def until(self, settled: Callable[[], str | None], timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        while True:
            self.poll()
            answer = settled()
            if answer is not None or time.monotonic() >= deadline:
                return answer
            time.sleep(POLL)


def _get_region(cluster: Cluster, namespace: str, region: str) -> dict[str, Any]:
    found: dict[str, Any] = cluster.get(regions_path(namespace, region))
    return found


def _holder(cluster: Cluster, namespace: str, group: str) -> str | None:
    try:
        lease = cluster.get(leases_path(namespace, lease_name(group)))
    except NotFound:
        return None
    holder: str | None = (lease.get("spec") or {}).get("holderIdentity") or None
    return holder


def promote(
    cluster: Cluster, namespace: str, region: str, *, wait: bool, timeout: float
) -> Outcome:
    _get_region(cluster, namespace, region)  # NotFound: exit 3 before writing anything
    watch = _Watch(cluster, namespace)
    cluster.merge_patch(
        regions_path(namespace, region),
        {"metadata": {"annotations": {PROMOTE_ANNOTATION: str(time.time_ns())}}},
    )
    outcome = Outcome("promote", region, namespace, "written", "promotion requested")
    if not wait:
        return outcome

    def settled() -> str | None:
        if watch.on(region, "PromotionRefused"):
            return "refused"
        if watch.on(region, "AlreadyLeader", "LeadershipAcquired"):
            return "done"
        return None

    answer = watch.until(settled, timeout)
    outcome.events = watch.new
    if answer == "refused":
        refused = watch.on(region, "PromotionRefused") or {}
        outcome.result, outcome.exit = "refused", Exit.PROBLEM
        outcome.message = str(refused.get("message") or "promotion refused")
    elif answer == "done":
        outcome.result, outcome.message = "done", f"{region} leads"
    else:
        outcome.result, outcome.exit = "timed out", Exit.TIMEOUT
        outcome.message = (
            f"no answer from the operator within {timeout:.0f}s: is it running? "
            f"(kubectl get events -n {namespace})"
        )
    return outcome


def set_fenced(
    cluster: Cluster, namespace: str, region: str, fenced: bool, *, wait: bool, timeout: float
) -> Outcome:
    current = _get_region(cluster, namespace, region)
    group = (current.get("spec") or {}).get("group") or "default"
    me = holder_identity(namespace, region)
    was_holder = _holder(cluster, namespace, group) == me
    watch = _Watch(cluster, namespace)
    cluster.merge_patch(
        regions_path(namespace, region),
        {"metadata": {"annotations": {FENCED_ANNOTATION: "true" if fenced else None}}},
    )
    action = "fence" if fenced else "unfence"
    outcome = Outcome(action, region, namespace, "written", f"{action} requested")
    if not wait:
        return outcome

    def settled() -> str | None:
        status = _get_region(cluster, namespace, region).get("status") or {}
        if bool(status.get("fenced")) != fenced:
            return None
        # a fenced leader hands over: done once the Lease names another region
        if fenced and was_holder and _holder(cluster, namespace, group) in (me, None):
            return None
        return "done"

    answer = watch.until(settled, timeout)
    outcome.events = watch.new
    if answer == "done":
        outcome.result = "done"
        outcome.message = (
            f"{region} is fenced: it will not lead"
            if fenced
            else f"{region} is no longer fenced (it does not take leadership back by itself)"
        )
    else:
        outcome.result, outcome.exit = "timed out", Exit.TIMEOUT
        outcome.message = (
            f"the operator did not confirm within {timeout:.0f}s: is it running? (a fenced "
            "leader waits for another region that may lead)"
        )
    return outcome
