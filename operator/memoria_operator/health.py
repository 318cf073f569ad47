"""Region health as the operator judges it for failover.

A region is healthy when its Deployment reports Available and its pods answer. What is probed:

* ``spec.failover.healthUrl`` when set (for example a global load balancer's address);
* else the region's Service by DNS name when ``spec.failover.probeService``;
* else, by default (``spec.failover.probePods``), every running pod of the region at its own IP.

Probing the process directly is what frees failover from the kubelet: a frozen container is
noticed at the next probe (about one renew interval), where the Deployment's availability would
flip only after the readiness probe failed several times, and a deleted pod at once. Pod IPs need
no cluster DNS. Redirects are never followed: a probe asks one address, not wherever it points.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from .kube import Kube, path_for
from .model import Region
from .probepolicy import ProbePolicy
from .render import PORT, selector


@dataclass
class Health:
    healthy: bool
    message: str
    # time.monotonic() since when the region is in this state: for healthy, the first good
    # probe; for unhealthy, the start of the last good probe (the last moment it was known to
    # serve), so the failover bound counts from there and not from when a probe timed out
    since: float
    since_wall: str
    leading: bool | None = None  # what the region's own /healthz says about its scheduler
    last_ok: float | None = None  # time.monotonic() when the last good probe started


def deployment_available(deployment: dict[str, Any] | None) -> tuple[bool, str]:
    if deployment is None:
        return False, "no Deployment"
    for cond in (deployment.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Available":
            if cond.get("status") == "True":
                return True, "Deployment available"
            return False, f"Deployment not available: {cond.get('message') or cond.get('reason')}"
    return False, "Deployment has not reported availability yet"


def health_url(region: Region) -> str | None:
    if region.spec.failover.health_url:
        return region.spec.failover.health_url
    if region.spec.failover.probe_service:
        return f"http://{region.workload_name}.{region.namespace}.svc:{PORT}/healthz"
    return None


def running_pod_urls(pods: list[dict[str, Any]]) -> list[str]:
    """The /healthz URL of each pod that runs and is not being deleted."""
    urls = []
    for pod in pods:
        status = pod.get("status") or {}
        ip = status.get("podIP")
        if status.get("phase") != "Running" or not ip or pod["metadata"].get("deletionTimestamp"):
            continue
        host = f"[{ip}]" if ":" in ip else ip
        urls.append(f"http://{host}:{PORT}/healthz")
    return urls


def _template(pod: dict[str, Any]) -> str:
    """Which pod template (ReplicaSet) the pod comes from."""
    return str((pod["metadata"].get("labels") or {}).get("pod-template-hash", ""))


def no_pod_serving(pods: list[dict[str, Any]]) -> str:
    deleting = sum(1 for p in pods if p["metadata"].get("deletionTimestamp"))
    starting = len(pods) - deleting
    return f"no pod can answer ({deleting} being deleted, {starting} not running yet)"


def scheduler_leading(body: Any) -> bool | None:
    """What a /healthz JSON body says about the region's scheduler: whether it leads, or None
    when the body has no readable answer (an empty body or section counts as not leading)."""
    body = body or {}
    if not isinstance(body, dict):
        return None
    scheduler = body.get("scheduler") or {}
    if not isinstance(scheduler, dict):
        return None
    return bool(scheduler.get("leading"))


# a watch that reconnects (a dropped connection, an API server restart) is not blindness
BLIND_AFTER_SECONDS = 5.0


def lease_blind(body: Any) -> bool:
    """True when a /healthz body says the region follows a Lease but has not been able to watch
    it for :data:`BLIND_AFTER_SECONDS`: such a region never arms its scheduler, so it must
    neither keep nor be given leadership."""
    if not isinstance(body, dict):
        return False
    leadership = body.get("leadership")
    if not isinstance(leadership, dict) or not leadership.get("lease"):
        return False
    if leadership.get("watch_connected") is not False:
        return False
    away = leadership.get("seconds_disconnected")
    # a runtime that does not say for how long counts as blind at once
    return not isinstance(away, int | float) or away >= BLIND_AFTER_SECONDS


async def probe(
    session: aiohttp.ClientSession,
    url: str,
    limit: float,
    label: str | None = None,
    *,
    absent_ok: bool = False,
) -> tuple[bool, str, bool | None]:
    """(ok, message, leading) from one GET of a Memoria /healthz, within ``limit`` seconds.

    ``label`` names the target in the message instead of the URL; given for a user's health
    URL, whose answer is then reported only as a class (answered N, no answer, connection
    failed), never its text: status must not turn the operator into an oracle for what a URL
    answers. ``absent_ok``: a 404 means the image has no /healthz (``control: env``), and the
    region is judged by its Deployment alone."""
    name = label or url
    try:
        async with session.get(
            url, timeout=aiohttp.ClientTimeout(total=limit), allow_redirects=False
        ) as resp:
            try:
                body = await resp.json(content_type=None)
            except ValueError:  # not JSON (or not UTF-8): the status code alone decides
                body = None
            leading = scheduler_leading(body)
            if resp.status == 200 and lease_blind(body):
                return False, f"{name} answered but cannot watch its Lease", leading
            if resp.status == 200:
                return True, f"{name} answered 200", leading
            if resp.status == 404 and absent_ok:
                return True, f"{name} has no /healthz (404): judged by the Deployment", None
            if 300 <= resp.status < 400:
                return False, f"{name} answered {resp.status} (redirects are not followed)", None
            return False, f"{name} answered {resp.status}", leading
    except TimeoutError:
        return False, f"{name} did not answer within {limit:g}s", None
    except (aiohttp.ClientError, OSError) as exc:
        detail = "" if label else f" {exc}"
        return False, f"{name} unreachable: {type(exc).__name__}{detail}".strip(), None


class HealthTracker:
    """Keeps each region's health and when it last changed."""

    def __init__(
        self, timeout: float, kube: Kube | None = None, policy: ProbePolicy | None = None
    ) -> None:
        self.timeout = timeout
        self.kube = kube  # to find the pods to probe; None: Deployment and URLs only
        self.policy = policy or ProbePolicy()
        self.pods: dict[str, list[dict[str, Any]]] = {}  # each region's pods, as last listed
        self.state: dict[str, Health] = {}
        # regions whose pods were deleted: (the deleted pods' templates, when a replacement
        # first answered; None: not yet)
        self._replaced: dict[str, tuple[frozenset[str], float | None]] = {}
        self._session: aiohttp.ClientSession | None = None

    async def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=64, force_close=True)
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _urls(self, region: Region) -> list[str]:
        url = health_url(region)
        if url or not (region.spec.failover.probe_pods and self.kube is not None):
            self.pods.pop(region.key, None)  # not listed this tick: the endpoint lists itself
            return [url] if url else []
        labels = ",".join(f"{k}={v}" for k, v in sorted(selector(region).items()))
        try:
            pods = await asyncio.to_thread(
                self.kube.list, path_for("v1", "Pod", region.namespace), labelSelector=labels
            )
        except Exception:  # no pod list (RBAC, API away): judge by the Deployment alone
            self.pods.pop(region.key, None)
            return []
        self.pods[region.key] = pods  # this tick's list, for the write endpoint's labels too
        return running_pod_urls(pods)

    async def check(self, region: Region, deployment: dict[str, Any] | None) -> Health:
        started = time.monotonic()
        ok, message = deployment_available(deployment)
        urls = await self._urls(region)
        leading: bool | None = None
        label = None
        if region.spec.failover.health_url:
            label = "the health URL"
            refused = await asyncio.to_thread(
                self.policy.refusal,
                region.spec.failover.health_url,
                own_service=region.workload_name,
                namespace=region.namespace,
            )
            if refused:
                return self._record(
                    region.key, False, f"health URL refused: {refused}", None, started
                )
        if urls:
            session = await self.session()
            results = await asyncio.gather(
                *(
                    probe(session, u, self.timeout, label, absent_ok=region.env_control)
                    for u in urls
                )
            )
            answered = [r for r in results if r[0]]
            # the region leads if any pod says so; it is up if any pod answers
            said = [r[2] for r in results if r[2] is not None]
            leading = any(said) if said else None
            if ok:
                ok = bool(answered)
                message = answered[0][1] if answered else results[0][1]
        elif ok and self.pods.get(region.key):
            # there are pods and none can answer (deleted, or a replacement still starting):
            # the Deployment may count a pod as available for a while yet, but nothing
            # serves, and the failover bound runs from the last pod that answered. (No pod at
            # all with an available Deployment: no kubelet reports pods, as in the process
            # test bed; the Deployment is all there is to judge by.)
            ok, message = False, no_pod_serving(self.pods[region.key])
        ok, message = self._after_deletion(region, ok, message)
        return self._record(region.key, ok, message, leading, started)

    def _after_deletion(self, region: Region, ok: bool, message: str) -> tuple[bool, str]:
        """A region left with no answering pod by a deletion stays unhealthy until its
        replacement has answered for the region's failover bound: a deleted pod is a region
        that went down (the standby takes over within the bound, however fast the
        Deployment replaces it), while a killed container keeps its pod and is judged by its
        answers alone (the kubelet's restart is no failover). A replacement from another pod
        template is a rollout (a changed spec, or ``control: env`` flipping the scheduler),
        not an outage: it is judged by its answers alone too."""
        key = region.key
        pods = self.pods.get(key) or []
        if not ok:
            deleted = {_template(p) for p in pods if p["metadata"].get("deletionTimestamp")}
            if deleted or key in self._replaced:
                before = self._replaced.get(key, (frozenset(), None))[0]
                self._replaced[key] = (before | deleted, None)  # waiting for a replacement
            return ok, message
        if key not in self._replaced:
            return ok, message
        templates, first = self._replaced[key]
        running = {_template(p) for p in pods if not p["metadata"].get("deletionTimestamp")}
        if running - templates:  # a new template answers: a rollout, not a lost pod
            del self._replaced[key]
            return ok, message
        now = time.monotonic()
        if first is None:
            first = now
            self._replaced[key] = (templates, first)
        bound = region.spec.failover.unhealthy_after_seconds
        if now - first >= bound:
            del self._replaced[key]
            return ok, message
        return False, (
            f"its pod was deleted; the replacement answers ({now - first:.0f}s) and counts "
            f"as healthy once it has for {bound}s"
        )

    def _record(
        self, key: str, ok: bool, message: str, leading: bool | None, started: float
    ) -> Health:
        previous = self.state.get(key)
        last_ok = started if ok else (previous.last_ok if previous else None)
        if previous is None or previous.healthy != ok:
            from . import conditions

            now = time.monotonic()
            # unhealthy since it was last seen serving (not since this probe gave up); a
            # region never seen healthy is unhealthy from now
            since = now if ok or last_ok is None else last_ok
            health = Health(
                ok, message, since, conditions.wall_before(now - since), leading, last_ok
            )
        else:
            health = Health(ok, message, previous.since, previous.since_wall, leading, last_ok)
        self.state[key] = health
        return health

    def forget(self, key: str) -> None:
        self.state.pop(key, None)
        self._replaced.pop(key, None)
        self.pods.pop(key, None)
