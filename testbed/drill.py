"""Two MemoriaRegions as pods on the test bed's node, seen the way a user sees them: the Lease,
each pod's own ``/healthz``, ``kubectl get mreg`` and the group endpoint. Shared by the node e2e
tests (each module makes its own pair) and what they need to write and read memories."""

from __future__ import annotations

import json
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

from .kube import KubeTarget
from .node import RunningNode
from .onnode import (
    GROUP_ENDPOINT,
    PROMOTE_ANNOTATION,
    SCHEDULER_LEASE,
    endpoint_ips,
    eventually,
    http,
    lease_holder,
    mreg_row,
    ready_pod,
    region_url,
    scheduler_leading,
)

REGIONS = ("region-a", "region-b")
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never an HTTP proxy

# service_metadata of the region's own store, read inside its pod (the store file is there)
_METADATA = (
    "import json, os; from memoria.store import MemoryStore; "
    "s = MemoryStore(os.environ['MEMORIA_DATABASE__CONNECTION_STRING']); "
    "print(json.dumps(s.metadata())); s.close()"
)


@dataclass
class Drill:
    kube: KubeTarget
    node: RunningNode
    ns: str

    def holder(self) -> str | None:
        return lease_holder(self.kube, self.ns, SCHEDULER_LEASE)

    def key(self, region: str) -> str:
        return f"{self.ns}/{region}"

    def pod(self, region: str, timeout: float = 180) -> dict[str, Any]:
        found: dict[str, Any] = eventually(
            lambda: ready_pod(self.kube, self.ns, region), timeout, f"a Ready pod of {region}", 0.5
        )
        return found

    def set_bound(self, seconds: int) -> None:
        for region in ("region-a", "region-b"):
            self.kube.kubectl(
                "patch",
                "mreg",
                region,
                "-n",
                self.ns,
                "--type=merge",
                "-p",
                f'{{"spec": {{"failover": {{"unhealthyAfterSeconds": {seconds}}}}}}}',
            )

    def promote(self, region: str) -> None:
        """Ask for a switchover to ``region``, as a user does: a fresh promote annotation."""
        self.kube.kubectl(
            "annotate", "mreg", region, "-n", self.ns, "--overwrite",
            f"{PROMOTE_ANNOTATION}={time.time():.0f}",
        )  # fmt: skip

    def row(self, region: str) -> dict[str, str]:
        return mreg_row(self.kube, self.ns, region)

    def leads(self, region: str) -> bool:
        """The Lease, the region's own pod (/healthz scheduler.leading), ``kubectl get mreg``
        and the group endpoint all name ``region``."""
        if self.holder() != self.key(region):
            return False
        pod = ready_pod(self.kube, self.ns, region)
        if pod is None or not scheduler_leading(pod["status"]["podIP"]):
            return False
        row = self.row(region)
        if row.get("ROLE") != "leader" or row.get("HOLDER") != self.key(region):
            return False
        return endpoint_ips(self.kube, self.ns, GROUP_ENDPOINT) == {pod["status"]["podIP"]}

    def settled(self, leader: str, timeout: float = 120) -> None:
        """``leader`` leads and both regions are Ready True, as every view reports it."""
        standby = "region-b" if leader == "region-a" else "region-a"

        def ok() -> bool:
            return (
                self.leads(leader)
                and self.row(leader).get("READY") == "True"
                and self.row(standby).get("READY") == "True"
                and self.row(standby).get("ROLE") == "standby"
            )

        eventually(ok, timeout, f"{leader} leading, both regions Ready", 0.5)

    def url(self, region: str) -> str:
        return region_url(self.kube, self.ns, region)

    def write(self, region: str, text: str, y: int) -> str:
        status, body = http("POST", f"{self.url(region)}/memories", {"text": text, "y_coord": y})
        assert status == 201, (status, body)
        return str(body["id"])

    def has(self, region: str, memory_id: str) -> bool:
        return http("GET", f"{self.url(region)}/memories/{memory_id}")[0] == 200

    def health(self, region: str) -> dict[str, Any]:
        body: dict[str, Any] = http("GET", f"{self.url(region)}/healthz")[1]
        return body

    def metrics(self, region: str) -> str:
        """The region's ``/metrics`` text, as Prometheus scrapes it."""
        request = urllib.request.Request(f"{self.url(region)}/metrics")  # noqa: S310 - http only
        with _DIRECT.open(request, timeout=5) as resp:
            return str(resp.read().decode())

    def metadata(self, region: str) -> dict[str, str]:
        """The ``service_metadata`` table of the region's store (who decremented which day)."""
        out = self.kube.kubectl(
            "exec", "-n", self.ns, f"deploy/memoria-{region}", "--", "python", "-c", _METADATA
        ).stdout
        found: dict[str, str] = json.loads(out.strip().splitlines()[-1])
        return found

    def wait_all(self, region: str, ids: list[str], timeout: float = 60) -> None:
        try:
            eventually(
                lambda: all(self.has(region, m) for m in ids),
                timeout,
                f"{len(ids)} memories in {region}",
                0.5,
            )
        except AssertionError as exc:  # say what sync looked like in each region
            seen = {}
            for name in REGIONS:
                try:
                    seen[name] = self.health(name).get("sync")
                except OSError as why:
                    seen[name] = str(why)
            raise AssertionError(f"{exc}; sync: {seen}") from None

    def elapsed_until(self, check: Any, timeout: float, what: str) -> float:
        start = time.monotonic()
        eventually(check, timeout, what, 0.1)
        return time.monotonic() - start
