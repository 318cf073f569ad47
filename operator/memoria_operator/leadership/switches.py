"""The scheduler switches of a group's ``control: env`` regions, read and written: each tick the
manager asks :class:`SchedulerSwitches` what every env region's Deployment and pods say
(:meth:`~SchedulerSwitches.observe`, before deciding), then to make the Deployments agree with
the Lease just written (:meth:`~SchedulerSwitches.apply`, after). The rules are in
:mod:`.envcontrol`.

Reads are fresh from the API server, never from a watch cache: the order of a flip rests on
them. Writes are guarded by the Deployment's ``resourceVersion``.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import TYPE_CHECKING, Any

from ..kube import Conflict, Kube, path_for
from ..render import selector
from .endpoint import pod_selector
from .envcontrol import EnvScheduler, observe, scheduler_status, switch_patch, wanted_on
from .lease import read_lease
from .status import Event

if TYPE_CHECKING:
    from ..model import Region
    from .decide import GroupView

log = logging.getLogger("memoria_operator.leadership")


class SchedulerSwitches:
    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self._reported: dict[str, str] = {}  # the phase last reported per region (Events)
        self._deployments: dict[str, dict[str, Any] | None] = {}  # this tick's reads

    def _read(self, region: Region) -> EnvScheduler:
        path = path_for("apps/v1", "Deployment", region.namespace, region.workload_name)
        deployment = self.kube.get(path)
        pods = self.kube.list(
            path_for("v1", "Pod", region.namespace),
            labelSelector=pod_selector(selector(region)),
        )
        self._deployments[region.key] = deployment
        return observe(deployment, pods, region.status)

    def observe(self, regions: dict[str, Region]) -> dict[str, EnvScheduler]:
        """Every env region's switch, as the API shows it now."""
        return {key: self._read(r) for key, r in regions.items() if r.env_control}

    def apply(self, view: GroupView, lease: dict[str, Any] | None) -> None:
        """Make each env region's Deployment say what the Lease ``lease`` (as just written)
        allows: off everywhere first, then on for the holder. ``view.schedulers`` is updated
        with what was written."""
        holder = read_lease(lease, view.now).holder
        flips = []
        for key, state in view.schedulers.items():
            region = view.regions[key]
            want = wanted_on(region, holder)
            if state.on is not None and state.on != want:
                flips.append((want, key))
        for want, key in sorted(flips):  # False before True: stop before start
            deployment = self._deployments.get(key)
            if deployment is None:
                continue
            region = view.regions[key]
            path = path_for("apps/v1", "Deployment", region.namespace, region.workload_name)
            try:
                self.kube.merge_patch(path, switch_patch(deployment, want))
            except Conflict:
                log.info("%s: Deployment changed under us; the next tick looks again", key)
                continue
            log.info(
                "%s: DISABLE_SCHEDULERS=%s written (Lease holder: %s)",
                key,
                "false" if want else "true",
                holder or "nobody",
            )
            view.schedulers[key] = self._read_after_write(region, view.now)

    def _read_after_write(self, region: Region, now: dt.datetime) -> EnvScheduler:
        state = self._read(region)
        return EnvScheduler(
            on=state.on, rolled_out=state.rolled_out, detail=state.detail, changed=now
        )

    def status(self, view: GroupView, region: Region) -> tuple[dict[str, Any] | None, list[Event]]:
        """(``status.scheduler`` to write or None, Events to post) for one region."""
        state = view.schedulers.get(region.key)
        if state is None:
            return None, []
        last = self._reported.get(region.key, (region.status.get("scheduler") or {}).get("phase"))
        wanted, events = scheduler_status(region, state, view.now, last)
        if state.phase is not None:
            self._reported[region.key] = state.phase.value
        return wanted, [
            Event(regarding=region.key, type=kind, reason=reason, message=message)
            for kind, reason, message in events
        ]

    def forget(self, key: str) -> None:
        self._reported.pop(key, None)
        self._deployments.pop(key, None)
