"""Operator reconcile latency and scale, on the local control plane.

    .venv/bin/python bench/operator_bench.py [--sequential 50] [--burst 100]

1. ``kubectl apply`` of one MemoriaRegion -> its Deployment exists: p50/p99 over N regions
   applied one after another (timed from just before kubectl runs to the Deployment's ADDED
   watch event).
2. N MemoriaRegions in one ``kubectl apply``: seconds until every one is reconciled (Deployment
   exists and status.observedGeneration caught up), and the operator's peak RSS (VmHWM).
The operator runs as its own process (``memoria-operator run``), as in a cluster.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from pathlib import Path

import yaml

from testbed.cluster import operator_on_local_plane
from testbed.regions import region_manifest


class DeploymentWatch(threading.Thread):
    """Records when each Deployment first appears (watch events, not polling)."""

    def __init__(self, kubeconfig: Path, namespace: str) -> None:
        super().__init__(daemon=True)
        self.kubeconfig, self.namespace = kubeconfig, namespace
        self.seen: dict[str, float] = {}
        self.ready = threading.Event()

    def run(self) -> None:
        from kubernetes import client, config, watch

        api = client.AppsV1Api(config.new_client_from_config(config_file=str(self.kubeconfig)))
        listing = api.list_namespaced_deployment(self.namespace)
        self.ready.set()
        stream = watch.Watch().stream(
            api.list_namespaced_deployment,
            self.namespace,
            resource_version=listing.metadata.resource_version,
            timeout_seconds=600,
        )
        try:
            for event in stream:
                self.seen.setdefault(event["object"].metadata.name, time.monotonic())
        except Exception:
            pass


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--sequential", type=int, default=50)
    parser.add_argument("--burst", type=int, default=100)
    args = parser.parse_args()
    env = {"MEMORIA_OPERATOR_METRICS_PORT": "0", "MEMORIA_OPERATOR_RESYNC_SECONDS": "60"}
    with operator_on_local_plane(env, "--no-leader-election") as (plane, kube, operator):
        assert operator.pid is not None
        time.sleep(3)  # let kopf list and start its watches

        kube.kubectl("create", "namespace", "seq")
        watcher = DeploymentWatch(plane.kubeconfig, "seq")
        watcher.start()
        watcher.ready.wait(10)
        latencies = []
        for i in range(args.sequential):
            name = f"r{i:03d}"
            started = time.monotonic()
            kube.apply(region_manifest(name), "seq")
            deadline = started + 30
            while f"memoria-{name}" not in watcher.seen and time.monotonic() < deadline:
                time.sleep(0.002)
            latencies.append(watcher.seen[f"memoria-{name}"] - started)
        ordered = sorted(latencies)
        p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
        print(
            f"kubectl apply -> Deployment exists, {args.sequential} regions one by one: "
            f"p50 {statistics.median(latencies):.3f}s, p99 {p99:.3f}s, "
            f"max {max(latencies):.3f}s (kubectl itself included)"
        )

        kube.kubectl("create", "namespace", "burst")
        docs = "\n---\n".join(
            yaml.safe_dump(region_manifest(f"b{i:03d}")) for i in range(args.burst)
        )
        started = time.monotonic()
        kube.kubectl("apply", "-n", "burst", "-f", "-", stdin=docs, timeout=120)
        names = {f"b{i:03d}" for i in range(args.burst)}
        done: set[str] = set()
        while done != names and time.monotonic() - started < 300:
            items = kube.get_json("mreg", "-n", "burst")["items"]
            deployments = {
                d["metadata"]["name"] for d in kube.get_json("deployments", "-n", "burst")["items"]
            }
            done = {
                i["metadata"]["name"]
                for i in items
                if (i.get("status") or {}).get("observedGeneration") == i["metadata"]["generation"]
                and f"memoria-{i['metadata']['name']}" in deployments
            }
            time.sleep(0.2)
        elapsed = time.monotonic() - started
        print(
            f"{args.burst} MemoriaRegions in one apply: all reconciled in {elapsed:.1f}s "
            f"({len(done)}/{args.burst}); operator peak RSS {peak_rss_mib(operator.pid):.0f} MiB"
        )


if __name__ == "__main__":
    main()
