"""How long ``kubectl memoria status`` takes on a group of 10 regions (goal: under 1 s).

    .venv/bin/python bench/plugin_bench.py [--regions 10] [--runs 15]

Starts the local control plane, the operator (its own process), one Redis and ``--regions``
MemoriaRegions of one group, each with its own ``memoria serve`` process (their Deployments are
marked available, as the test bed does where no kubelet runs). Once every region is Ready and
one leads, runs ``kubectl memoria status`` through the real kubectl ``--runs`` times and prints
the wall-clock latency (process start to exit, what a user waits), and separately the time of
the reading itself inside one process (the API requests and every region's /healthz, at once).
Prints figures only; the tests assert none.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from kubectl_memoria.kube import Cluster
from kubectl_memoria.status import read
from testbed.cluster import operator_on_local_plane
from testbed.datastores import RedisServer
from testbed.harness import BED_OPERATOR_ENV
from testbed.plugin import kubectl_memoria, plugin_bin
from testbed.processes import free_port, wait_until
from testbed.regions import Brokers, RegionBed, health_failover, region_manifest

# the product's default timings (not the test bed's fast ones): ten regions' probes on a busy
# two-core machine must not time out and turn regions Unhealthy while we measure
OPERATOR_ENV = {
    **BED_OPERATOR_ENV,
    "MEMORIA_OPERATOR_LEASE_DURATION_SECONDS": "10",
    "MEMORIA_OPERATOR_RENEW_INTERVAL_SECONDS": "2",
    "MEMORIA_OPERATOR_RETRY_INTERVAL_SECONDS": "1",
    "MEMORIA_OPERATOR_HEALTH_PROBE_TIMEOUT_SECONDS": "2",
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--regions", type=int, default=10)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="memoria-pluginbench-"))
    names = [f"region-{i:02d}" for i in range(args.regions)]
    redis = RedisServer()
    redis.start()
    try:
        with operator_on_local_plane(OPERATOR_ENV, "--no-leader-election") as (_, kube, _op):
            ns = kube.create_namespace("bench")
            ports = {name: free_port() for name in names}
            for i, name in enumerate(names):
                kube.apply(
                    region_manifest(
                        name,
                        role="leader" if i == 0 else "standby",
                        priority=100 - i,
                        failover=health_failover(ports[name]),
                    ),
                    ns,
                )
            bed = RegionBed(kube, ns, Brokers("redis", dict.fromkeys(names, redis.url)), ports, tmp)
            try:
                bed.bring_up()
                bin_dir = plugin_bin(tmp / "bin")

                def settled() -> bool:
                    proc = kubectl_memoria(kube, bin_dir, "status", "-n", ns, "-o", "json")
                    groups = json.loads(proc.stdout or "[]")
                    return proc.returncode == 0 and len(groups[0]["regions"]) == len(names)

                wait_until(settled, 120, "every region Ready and healthy, one leading")
                walls = []
                codes = []
                for _ in range(args.runs):
                    started = time.perf_counter()
                    proc = kubectl_memoria(kube, bin_dir, "status", "-n", ns)
                    walls.append(time.perf_counter() - started)
                    # 1 (a region turned Unhealthy meanwhile) is an answer too; others are not
                    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
                    codes.append(proc.returncode)
                print(proc.stdout)
                cluster = Cluster.from_kubeconfig(str(kube.kubeconfig))
                inner = []
                for _ in range(args.runs):
                    started = time.perf_counter()
                    read(cluster, ns).report()
                    inner.append(time.perf_counter() - started)
                bare = []
                for _ in range(5):  # kubectl alone, for comparison: its own start and one GET
                    started = time.perf_counter()
                    subprocess.run(
                        [str(kube.kubectl_path), "get", "mreg", "-n", ns],
                        env=kube.env,
                        capture_output=True,
                        check=True,
                    )
                    bare.append(time.perf_counter() - started)
            finally:
                for proc_ in bed.processes.values():
                    proc_.stop()
    finally:
        redis.destroy()

    def p90(values: list[float]) -> float:
        return statistics.quantiles(values, n=10, method="inclusive")[-1]

    def line(what: str, values: list[float]) -> str:
        return (
            f"{what:44s} p50 {statistics.median(values) * 1000:6.0f} ms   "
            f"p90 {p90(values) * 1000:6.0f} ms   max {max(values) * 1000:6.0f} ms"
        )

    print(f"kubectl memoria status, {len(names)} regions in one group, {args.runs} runs:")
    print(line("wall clock through kubectl (what a user waits)", walls))
    print(line("reading alone (API + 10 /healthz, in process)", inner))
    print(line("kubectl get mreg, for comparison", bare))
    print(f"exit codes: {codes}")
    print(f"goal < 1000 ms: {'met' if p90(walls) < 1.0 else 'NOT met'} (p90)")


if __name__ == "__main__":
    main()
