"""The leadership loop: every retry interval (or sooner when woken), for each group of regions,
read the Lease, :func:`~.decide.decide` one step, write the next Lease, then the regions' status
and Events.

It keeps only what kopf's watches feed it (region and Deployment bodies) and health; everything
else lives in the Lease and the regions' status, so an operator restarted mid-way picks up where
the previous one stopped. Writes are guarded by ``resourceVersion``: a Lease changed under us is
a :class:`~..kube.Conflict`, and the step is decided again from what is there now.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from typing import Any

from memoria.contract import HOLDER_UID_ANNOTATION, holder_identity, lease_name

from .. import conditions as c
from ..config import OperatorConfig
from ..health import Health, HealthTracker
from ..kube import Conflict, Kube, path_for
from ..liveness import LIVENESS
from ..metrics import OperatorMetrics
from ..model import Region
from ..render import selector
from .crosscluster import CrossCluster
from .decide import Decision, GroupView, decide
from .endpoint import (
    label_patches,
    pod_selector,
    render_group_service,
    service_name,
    serving_key,
)
from .envcontrol import failover_bound
from .lease import API_VERSION, DecisionKind, micro_time, next_lease, parse_time, read_lease
from .status import (
    Event,
    conditions_unchanged,
    health_conditions,
    lease_status,
    region_events,
    region_status,
    status_unchanged,
    transition_events,
)
from .switches import SchedulerSwitches

log = logging.getLogger("memoria_operator.leadership")


class LeadershipManager:
    def __init__(self, kube: Kube, config: OperatorConfig, metrics: OperatorMetrics) -> None:
        self.kube = kube
        self.config = config
        self.metrics = metrics
        self.regions: dict[str, dict[str, Any]] = {}
        self.deployments: dict[str, dict[str, Any]] = {}
        self.health = HealthTracker(config.health_probe_timeout_seconds, kube, config.probe_policy)
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conflicts: set[str] = set()
        self._services: dict[tuple[str, str], dict[str, Any]] = {}  # group Services applied
        self._foreign_services: set[tuple[str, str]] = set()  # group names taken by others
        self.switches = SchedulerSwitches(kube)  # DISABLE_SCHEDULERS of control: env regions
        self.cross_cluster = CrossCluster(self)  # groups whose regions set spec.quorum

    # -- inputs from kopf's watches ----------------------------------------------------------

    def observe_region(self, body: dict[str, Any], *, deleted: bool) -> None:
        key = holder_identity(body["metadata"]["namespace"], body["metadata"]["name"])
        if deleted or body["metadata"].get("deletionTimestamp"):
            self.regions.pop(key, None)
            self.health.forget(key)
            self.switches.forget(key)
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
                except Exception:  # the API, a probe, a bug: the next tick starts afresh
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
            try:
                await self.step(namespace, group, members, health)
            except asyncio.CancelledError:
                raise
            except Exception:  # one group's trouble (a Lease it may not read) stops no other
                log.exception("leadership step for group %s/%s failed; retrying", namespace, group)

    async def step(
        self, namespace: str, group: str, members: dict[str, Region], health: dict[str, Health]
    ) -> None:
        if any(r.spec.quorum is not None for r in members.values()):
            await self.cross_cluster.step(namespace, group, members, health)
            return
        lease_path = path_for(API_VERSION, "Lease", namespace, lease_name(group))
        lease = await asyncio.to_thread(self.kube.get, lease_path)
        schedulers = await asyncio.to_thread(self.switches.observe, members)
        view = GroupView(
            namespace=namespace,
            group=group,
            lease=lease,
            regions=members,
            health=health,
            now=dt.datetime.now(dt.UTC),
            mono=time.monotonic(),
            renew_interval=self.config.renew_interval_seconds,
            schedulers=schedulers,
        )
        decision = decide(view)
        if decision.kind is not DecisionKind.KEEP:
            try:
                lease = await asyncio.to_thread(self._write_lease, view, decision)
            except Conflict:
                log.info("lease %s changed under us; deciding again", lease_path)
                self.wake()
                return
        await asyncio.to_thread(self.switches.apply, view, lease)
        serving = await asyncio.to_thread(self._route, view, lease)
        await asyncio.to_thread(self._publish, view, decision, lease, serving)

    # -- effects -----------------------------------------------------------------------------

    def _write_lease(self, view: GroupView, decision: Decision) -> dict[str, Any]:
        body = next_lease(
            view.lease,
            decision,
            namespace=view.namespace,
            group=view.group,
            now=view.now,
            duration=self.config.lease_duration_seconds,
        )
        if decision.kind is DecisionKind.ACQUIRE:
            # the incarnation that was granted: a region deleted and created again under the
            # same name is a new region, not the holder (see decide's bootstrap of a stale Lease)
            granted = view.regions.get(decision.holder or "")
            annotations = body["metadata"].setdefault("annotations", {})
            annotations[HOLDER_UID_ANNOTATION] = granted.uid if granted else ""
        path = path_for(API_VERSION, "Lease", view.namespace)
        if view.lease is None:
            written: dict[str, Any] = self.kube.create(path, body)
        else:
            written = self.kube.replace(f"{path}/{lease_name(view.group)}", body)
        if decision.kind is DecisionKind.RENEW:
            self.metrics.renewed(view.namespace, view.group)
        else:
            self._log_transition(view, decision, int(body["spec"]["leaseTransitions"]))
        return written

    def _log_transition(self, view: GroupView, decision: Decision, token: int) -> None:
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
        if decision.kind is DecisionKind.ACQUIRE:
            self.metrics.renewed(view.namespace, view.group)
            if decision.unhealthy_for is not None:
                self.metrics.failover_seconds.labels(view.namespace, view.group).observe(
                    decision.unhealthy_for
                )
        self._post(transition_events(view.lease, decision, token))

    def _post(self, events: list[Event]) -> None:
        for event in events:
            body = self.regions.get(event.regarding)
            if body is not None:
                self.kube.event(body, event.type, event.reason, event.message)

    def _route(self, view: GroupView, lease: dict[str, Any] | None) -> str | None:
        """Point the group's write endpoint at the region that should serve it; return that
        region's key. The label comes off every other region's pods before it goes on the
        serving region's, so the endpoint never holds two regions."""
        facts = read_lease(lease, view.now)
        serving = serving_key(facts, view.healthy)
        self.label_serving(view, serving)
        return serving

    def label_serving(self, view: GroupView, serving: str | None) -> None:
        """Put the serving label on ``serving``'s pods only (None: nobody's)."""
        self._ensure_group_service(view)
        order = sorted(view.regions.values(), key=lambda r: r.key == serving)  # others first
        for region in order:
            pods = self.health.pods.get(region.key)  # listed by this tick's probes
            if pods is None:
                pods = self.kube.list(
                    path_for("v1", "Pod", region.namespace),
                    labelSelector=pod_selector(selector(region)),
                )
            for name, patch in label_patches(pods, serve=region.key == serving):
                try:
                    self.kube.merge_patch(path_for("v1", "Pod", region.namespace, name), patch)
                except Exception as exc:  # a pod gone meanwhile; the next tick looks again
                    log.info("could not relabel pod %s/%s: %s", region.namespace, name, exc)

    def _ensure_group_service(self, view: GroupView) -> None:
        owners = [(r.name, r.uid) for r in view.regions.values() if r.uid]
        wanted = render_group_service(view.namespace, view.group, owners)
        key = (view.namespace, view.group)
        if self._services.get(key) == wanted:
            return
        existing = self.kube.get(
            path_for("v1", "Service", view.namespace, service_name(view.group))
        )
        labels = ((existing or {}).get("metadata") or {}).get("labels") or {}
        if (
            existing is not None
            and labels.get("app.kubernetes.io/managed-by") != "memoria-operator"
        ):
            # never adopt or overwrite someone else's Service: say so once per operator run
            if key not in self._foreign_services:
                self._foreign_services.add(key)
                log.warning(
                    "group %s/%s: Service %s exists and is not managed by memoria-operator; "
                    "the group's write endpoint is not published until it is renamed or deleted",
                    view.namespace,
                    view.group,
                    service_name(view.group),
                )
            return
        self._foreign_services.discard(key)
        self.kube.apply(wanted)
        self._services[key] = wanted

    def _publish(
        self,
        view: GroupView,
        decision: Decision,
        lease: dict[str, Any] | None,
        serving: str | None = None,
    ) -> None:
        """Write each region's leadership facts into its status (only what changed)."""
        leadership = lease_status(view.group, lease)
        leadership["service"] = service_name(view.group)
        leadership["serving"] = serving.split("/", 1)[1] if serving else ""
        holder = leadership["holder"]
        bound = failover_bound(
            view,
            holder,
            lease_duration=self.config.lease_duration_seconds,
            retry_interval=self.config.retry_interval_seconds,
        )
        if bound is not None:
            leadership["failoverBoundSeconds"] = bound
        self.metrics.set_holder(
            view.namespace,
            view.group,
            [r.name for r in view.regions.values()],
            holder.split("/", 1)[-1] if holder else None,
        )
        for region in view.regions.values():
            self.publish_region(view, decision, region, leadership)

    def publish_region(
        self, view: GroupView, decision: Decision, region: Region, leadership: dict[str, Any]
    ) -> None:
        wanted, cond = region_status(view, decision, region, leadership)
        scheduler, switch_events = self.switches.status(view, region)
        if scheduler is not None:
            wanted["scheduler"] = scheduler
        health = health_conditions(view, region, region.status)
        if heartbeat_due(region.status, view.now, self.config.heartbeat_seconds):
            # status is as of the operator's last look: say when that was, so a status left by
            # an operator that stopped reads as old (the Seen column) rather than as the truth
            wanted["observedTime"] = micro_time(view.now)
        elif (
            region.key not in decision.acks
            and status_unchanged(region.status, wanted, cond)
            and conditions_unchanged(region.status, health)
        ):
            return

        flipped: list[dict[str, Any]] = []

        def mutate(status: dict[str, Any]) -> None:
            flipped.clear()  # called again on a write conflict
            status.update(wanted)
            fresh = health_conditions(view, region, status)  # Ready from what is there now
            before = c.find(status.get("conditions") or [], c.READY)
            status["conditions"] = c.merge(status.get("conditions") or [], [cond, *fresh])
            after = c.find(status["conditions"], c.READY)
            if after is not None and c.ready_changed(before, after):
                flipped.append(after)

        self.kube.update_status(region.namespace, region.name, mutate)
        if region.key not in self.regions:
            return
        for ready in flipped:  # the reconciler's rule: an Event when Ready changes
            self.kube.event(self.regions[region.key], *c.ready_event(ready))
        self._post(
            region_events(decision, region.key, conflict_reported=region.key in self._conflicts)
        )
        self._post(switch_events)
        if region.key in decision.conflict:
            self._conflicts.add(region.key)
        else:
            self._conflicts.discard(region.key)


def heartbeat_due(status: dict[str, Any], now: dt.datetime, every: float) -> bool:
    """True when the region's ``status.observedTime`` is missing or older than ``every``
    seconds: the operator then rewrites it even if nothing else changed."""
    try:
        seen = parse_time(status.get("observedTime"))
    except (TypeError, ValueError):  # not a time: rewrite it
        return True
    return seen is None or (now - seen).total_seconds() >= every
