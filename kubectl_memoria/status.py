"""``kubectl memoria status``: who leads each group, since when and why, and how each region is.

:func:`collect` asks the API server for the regions and Leases of a namespace, and each region's
``/healthz`` (through the API server's service proxy, else the region's
``spec.failover.healthUrl``), all at once; :func:`build` turns what it found into the report.
The public ``/healthz`` view is enough: it needs no API key and holds no secret.
"""

from __future__ import annotations

import datetime as dt
import json
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from http.client import HTTPConnection, HTTPException, HTTPSConnection
from typing import Any, Literal

from memoria.contract import DEFAULT_GROUP, GROUP, PLURAL, VERSION, lease_name

from .kube import ApiError, Cluster, KubeError

HealthVia = Literal["service-proxy", "healthUrl", "none"]
HEALTH_TIMEOUT = 2.0


def regions_path(namespace: str, name: str | None = None) -> str:
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"
    return f"{path}/{name}" if name else path


def leases_path(namespace: str, name: str | None = None) -> str:
    path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
    return f"{path}/{name}" if name else path


def healthz_proxy_path(namespace: str, region: str) -> str:
    """``/healthz`` of the region's own Service (``memoria-<name>``, port ``http``)."""
    return f"/api/v1/namespaces/{namespace}/services/memoria-{region}:http/proxy/healthz"


@dataclass
class Health:
    """One region's ``/healthz`` answer, or why there is none."""

    via: HealthVia
    body: dict[str, Any] | None = None
    error: str | None = None


@dataclass
class RegionStatus:
    name: str
    role: str
    ready: str
    ready_reason: str
    fenced: bool
    health: str  # ok | degraded | down | unreachable | unknown
    health_via: HealthVia
    health_error: str | None
    scheduler_leading: bool | None
    sync_state: str | None
    outbox_depth: int | None
    listener_reconnects: int | None
    last_decrement_date: str | None
    last_decrement_by: str | None


@dataclass
class GroupStatus:
    namespace: str
    group: str
    leader: str | None
    fencing_token: int | None
    lease_renew_age_seconds: float | None
    last_transition_time: str | None
    last_transition_reason: str | None
    regions: list[RegionStatus] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _parse_time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _condition(region: dict[str, Any], type_: str) -> dict[str, Any]:
    for cond in (region.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return dict(cond)
    return {}


def _region_status(region: dict[str, Any], health: Health) -> RegionStatus:
    status = region.get("status") or {}
    ready = _condition(region, "Ready")
    body = health.body or {}
    sync = body.get("sync") or {}
    decrement = body.get("decrement") or {}
    if health.body is not None:
        state = str(body.get("status") or "unknown")
    else:
        state = "unreachable" if health.via != "none" else "unknown"
    return RegionStatus(
        name=region["metadata"]["name"],
        role=str(status.get("role") or "-"),
        ready=str(ready.get("status") or "Unknown"),
        ready_reason=str(ready.get("reason") or ""),
        fenced=bool(status.get("fenced")),
        health=state,
        health_via=health.via,
        health_error=health.error,
        scheduler_leading=(body.get("scheduler") or {}).get("leading"),
        sync_state=sync.get("state"),
        outbox_depth=sync.get("outbox_depth"),
        listener_reconnects=sync.get("listener_reconnects"),
        last_decrement_date=decrement.get("date"),
        last_decrement_by=decrement.get("by"),
    )


def build(
    namespace: str,
    regions: list[dict[str, Any]],
    leases: dict[str, dict[str, Any]],
    health: dict[str, Health],
    now: dt.datetime,
) -> list[GroupStatus]:
    """The report, per group in name order: pure, from what :func:`collect` read."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for region in regions:
        groups.setdefault((region.get("spec") or {}).get("group") or DEFAULT_GROUP, []).append(
            region
        )
    out = []
    for group, members in sorted(groups.items()):
        lease = leases.get(lease_name(group)) or {}
        spec = lease.get("spec") or {}
        shared = ((members[0].get("status") or {}).get("leadership")) or {}
        # the Lease when it could be read, else what the operator last wrote in the status
        holder = str(spec.get("holderIdentity") or ("" if lease else shared.get("holder") or ""))
        leader = holder.split("/", 1)[1] if holder.startswith(f"{namespace}/") else None
        renewed = _parse_time(spec.get("renewTime"))
        report = GroupStatus(
            namespace=namespace,
            group=group,
            leader=leader,
            fencing_token=spec.get("leaseTransitions", 0) if lease else shared.get("transitions"),
            lease_renew_age_seconds=(
                round((now - renewed).total_seconds(), 1) if renewed and holder else None
            ),
            last_transition_time=shared.get("lastTransitionTime"),
            last_transition_reason=shared.get("lastTransitionReason"),
        )
        for region in sorted(members, key=lambda r: r["metadata"]["name"]):
            name = region["metadata"]["name"]
            report.regions.append(_region_status(region, health.get(name, Health("none"))))
        report.problems = problems(report)
        out.append(report)
    return out


def problems(group: GroupStatus) -> list[str]:
    """What a user should look at; ``status`` exits 1 when the list is not empty. Health that
    could not be asked (no proxy permission, no health URL) is shown but is not a problem."""
    found = []
    if group.leader is None:
        found.append(f"group {group.group}: no region holds the Lease")
    for r in group.regions:
        if r.ready != "True":
            found.append(f"{r.name}: not Ready ({r.ready_reason or 'no status yet'})")
        if r.health in ("degraded", "down", "unreachable"):
            found.append(f"{r.name}: /healthz {r.health}")
    return found


# -- reading ---------------------------------------------------------------------------------------
def _health_via_proxy(cluster: Cluster, namespace: str, name: str) -> Health:
    try:
        status, data = cluster.raw("GET", healthz_proxy_path(namespace, name))
    except KubeError as exc:
        return Health("service-proxy", error=str(exc))
    if status in (200, 503):
        try:
            body = json.loads(data)
        except ValueError:
            body = None
        # a 503 may be the region's own answer (down) or the API server's Status (no endpoint)
        if isinstance(body, dict) and body.get("kind") != "Status" and "sync" in body:
            return Health("service-proxy", body=body)
    return Health("service-proxy", error=f"service proxy answered {status}: {_reason(data)}")


def _reason(data: bytes) -> str:
    try:
        return str(json.loads(data).get("message") or "")[:160]
    except (ValueError, AttributeError):
        return data.decode(errors="replace")[:160]


def _health_via_url(url: str) -> Health:
    """GET ``url`` directly (http.client: urllib.request costs a tenth of a second to import,
    a tenth of the budget). Redirects are not followed, as the operator's probes do not."""
    parts = urllib.parse.urlsplit(url)
    conn_type = HTTPSConnection if parts.scheme == "https" else HTTPConnection
    conn = conn_type(parts.hostname or "", parts.port, timeout=HEALTH_TIMEOUT)
    try:
        conn.request("GET", parts.path or "/", headers={"Accept": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
    except (OSError, HTTPException) as exc:
        return Health("healthUrl", error=f"health URL: {exc}")
    finally:
        conn.close()
    try:
        body = json.loads(data)
    except ValueError:
        body = None
    if isinstance(body, dict) and resp.status in (200, 503):
        return Health("healthUrl", body=body)
    return Health("healthUrl", error=f"health URL answered {resp.status}")


def region_health(cluster: Cluster, namespace: str, region: dict[str, Any]) -> Health:
    """The region's ``/healthz``: through the service proxy, else its ``healthUrl``. ``error``
    says why the proxy did not answer (and the URL, when neither did)."""
    name = region["metadata"]["name"]
    proxied = _health_via_proxy(cluster, namespace, name)
    if proxied.body is not None:
        return proxied
    url = ((region.get("spec") or {}).get("failover") or {}).get("healthUrl")
    if not url or not str(url).startswith(("http://", "https://")):
        return proxied
    direct = _health_via_url(str(url))
    # kept either way: why the proxy was not used
    direct.error = proxied.error if direct.body is not None else f"{proxied.error}; {direct.error}"
    return direct


@dataclass
class Reading:
    """What one namespace holds: regions, Leases by name, and each region's health."""

    namespace: str
    regions: list[dict[str, Any]]
    leases: dict[str, dict[str, Any]]
    health: dict[str, Health]

    def report(self) -> list[GroupStatus]:
        return build(
            self.namespace, self.regions, self.leases, self.health, dt.datetime.now(dt.UTC)
        )


def read(cluster: Cluster, namespace: str, group: str | None = None) -> Reading:
    """Regions, Leases and every region's health, all requests at once; raises
    :class:`KubeError` when the API server cannot list the regions."""
    with ThreadPoolExecutor(max_workers=16) as pool:
        regions_f = pool.submit(cluster.get, regions_path(namespace))
        leases_f = pool.submit(_leases, cluster, namespace)
        regions = [
            r
            for r in regions_f.result().get("items") or []
            if group is None or ((r.get("spec") or {}).get("group") or DEFAULT_GROUP) == group
        ]
        futures = {
            r["metadata"]["name"]: pool.submit(region_health, cluster, namespace, r)
            for r in regions
        }
        health = {name: f.result() for name, f in futures.items()}
        return Reading(namespace, regions, leases_f.result(), health)


def _leases(cluster: Cluster, namespace: str) -> dict[str, dict[str, Any]]:
    try:
        items = cluster.get(leases_path(namespace)).get("items") or []
    except ApiError:
        return {}  # no permission to read Leases: the regions' status still names the holder
    return {i["metadata"]["name"]: i for i in items}
