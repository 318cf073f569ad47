"""Failover and switchover times with real region processes, on the local control plane.

    .venv/bin/python bench/leadership_bench.py [--drills 10] [--bound 5]

Each failover drill SIGKILLs the leading region's ``memoria serve`` process and times until the
standby's own /healthz says its scheduler leads; the killed region is restarted (it comes back
as standby) and the next drill kills the other one. Each planned switchover annotates the
standby and times the same way. The operator runs as its own process with a 4 s Lease renewed
every 1 s (tick 0.5 s): the Lease must not outlast the failover bound.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from testbed.cluster import operator_on_local_plane
from testbed.regions import region_bed

TIMINGS = {
    "MEMORIA_OPERATOR_LEASE_DURATION_SECONDS": "4",
    "MEMORIA_OPERATOR_RENEW_INTERVAL_SECONDS": "1",
    "MEMORIA_OPERATOR_RETRY_INTERVAL_SECONDS": "0.5",
    "MEMORIA_OPERATOR_HEALTH_PROBE_TIMEOUT_SECONDS": "0.5",
    # the regions are processes on loopback: allow probing them there
    "MEMORIA_OPERATOR_HEALTH_URL_ALLOW": "127.0.0.0/8",
    "MEMORIA_OPERATOR_METRICS_PORT": "0",
}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def wait_leading(bed, name: str, timeout: float = 60) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if bed.leading(name):
            return
        time.sleep(0.02)
    raise TimeoutError(f"{name} did not lead within {timeout}s")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--drills", type=int, default=10)
    parser.add_argument("--bound", type=int, default=5)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="memoria-leaderbench-"))
    with operator_on_local_plane(TIMINGS, "--no-leader-election") as (_, kube, _operator):
        ns = kube.create_namespace("bench")
        with region_bed(kube, ns, tmp, bound=args.bound) as bed:
            bed.bring_up()
            leader, standby = "region-a", "region-b"
            wait_leading(bed, leader)
            failovers = []
            for _ in range(args.drills):
                time.sleep(1.5)  # a steady state: renewed, probed
                started = time.monotonic()
                bed.processes[leader].kill()
                wait_leading(bed, standby)
                failovers.append(time.monotonic() - started)
                bed.start(leader)
                leader, standby = standby, leader
            switchovers = []
            for i in range(args.drills):
                time.sleep(1.5)
                started = time.monotonic()
                kube.kubectl(
                    "annotate",
                    "mreg",
                    standby,
                    "-n",
                    ns,
                    "--overwrite",
                    f"memoria.arcafutura.io/promote=bench-{i}-{time.time()}",
                )
                wait_leading(bed, standby)
                switchovers.append(time.monotonic() - started)
                leader, standby = standby, leader
        print(
            f"failover, kill -> standby's scheduler leads, {args.drills} drills, bound "
            f"{args.bound}s: p50 {statistics.median(failovers):.2f}s, "
            f"p99 {pct(failovers, 0.99):.2f}s, max {max(failovers):.2f}s"
        )
        print(
            f"planned switchover, annotate -> new leader's scheduler leads, {args.drills} runs: "
            f"p50 {statistics.median(switchovers):.2f}s, p99 {pct(switchovers, 0.99):.2f}s"
        )
        print(
            "reference: client-go leader election defaults to a 15 s lease (a crashed holder "
            "is replaced after up to 15 s, plus the retry period), with no fencing"
        )


if __name__ == "__main__":
    main()
