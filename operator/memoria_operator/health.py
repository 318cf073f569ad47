"""Region health as the operator judges it for failover.

A region is healthy when its Deployment reports Available and, if a health URL is configured
(``spec.failover.healthUrl``, or the Service when ``spec.failover.probeService``), that URL
answers 200 within the probe timeout. Probing the URL directly is what frees failover from the
kubelet's node grace period: a dead process is noticed in one probe interval.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from .model import Region
from .render import PORT


@dataclass
class Health:
    healthy: bool
    message: str
    since: float  # time.monotonic() of the last change between healthy and unhealthy
    since_wall: str
    leading: bool | None = None  # what the region's own /healthz says about its scheduler


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


async def probe(
    session: aiohttp.ClientSession, url: str, limit: float
) -> tuple[bool, str, bool | None]:
    """(ok, message, leading) from one GET of a Memoria /healthz, within ``limit`` seconds."""
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=limit)) as resp:
            leading = None
            try:
                body = await resp.json(content_type=None)
                leading = bool(((body or {}).get("scheduler") or {}).get("leading"))
            except (ValueError, aiohttp.ContentTypeError, AttributeError):
                pass
            if resp.status == 200:
                return True, f"{url} answered 200", leading
            return False, f"{url} answered {resp.status}", leading
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return False, f"{url} unreachable: {type(exc).__name__} {exc}".strip(), None


class HealthTracker:
    """Keeps each region's health and when it last changed."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.state: dict[str, Health] = {}
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

    async def check(self, region: Region, deployment: dict[str, Any] | None) -> Health:
        ok, message = deployment_available(deployment)
        leading: bool | None = None
        url = health_url(region)
        if ok and url:
            ok, message, leading = await probe(await self.session(), url, self.timeout)
        elif url:
            # still ask the region about its scheduler: a handover needs to know
            _, _, leading = await probe(await self.session(), url, self.timeout)
        return self._record(region.key, ok, message, leading)

    def _record(self, key: str, ok: bool, message: str, leading: bool | None) -> Health:
        previous = self.state.get(key)
        if previous is None or previous.healthy != ok:
            from . import conditions

            health = Health(ok, message, time.monotonic(), conditions.now(), leading)
        else:
            health = Health(ok, message, previous.since, previous.since_wall, leading)
        self.state[key] = health
        return health

    def forget(self, key: str) -> None:
        self.state.pop(key, None)
