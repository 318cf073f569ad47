"""Leadership across three clusters: failover after losing the leader's whole cluster, a planned
switchover across clusters, and how fast a cut-off leader steps down.

    .venv/bin/python bench/crosscluster_bench.py [--rounds 10] [--partitions 5]

Runs the federation bed (testbed/federation.py: three local control planes, an operator per
cluster, a region per cluster as a process, every operator-to-peer link through a proxy) with a
4 s Lease, a 1 s renew interval, a 0.5 s retry interval and a 1 s clock-skew bound. Times are
taken from the regions' own /healthz, polled every 20 ms:

* cluster loss: from the SIGKILL of the leader's etcd, API server, operator and region to another
  region's scheduler leading (the cluster is brought back before the next round);
* switchover: from `kubectl annotate mreg <standby> memoria.arcafutura.io/promote=...` in the
  standby's own cluster to that region leading;
* step-down: the leader's cluster cut off from the others both ways: from the cut to its region
  no longer leading (goal: within one Lease duration), and to another region leading.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from testbed.federation import NAMESPACE, FederationBed

DURATION = 4.0
TIMINGS = {
    "MEMORIA_OPERATOR_LEASE_DURATION_SECONDS": str(DURATION),
    "MEMORIA_OPERATOR_RENEW_INTERVAL_SECONDS": "1",
    "MEMORIA_OPERATOR_RETRY_INTERVAL_SECONDS": "0.5",
}


def leader(bed: FederationBed, exclude: str | None = None) -> str | None:
    for name in bed.names:
        if name != exclude and bed.leading(name):
            return name
    return None


def until(check, timeout: float = 60) -> float:  # type: ignore[no-untyped-def]
    """Seconds until ``check()`` is truthy (polled every 20 ms)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():
            return time.monotonic() - start
        time.sleep(0.02)
    raise TimeoutError(f"not within {timeout}s")


def summary(label: str, values: list[float]) -> str:
    if not values:
        return f"{label}: no rounds"
    cuts = statistics.quantiles(values, n=100, method="inclusive") if len(values) > 1 else values
    p50 = statistics.median(values)
    p99 = cuts[98] if len(values) > 1 else values[0]
    return (
        f"{label}: n={len(values)} p50 {p50:.2f}s p99 {p99:.2f}s max {max(values):.2f}s "
        f"(min {min(values):.2f}s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--partitions", type=int, default=5)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="memoria-crosscluster-bench-"))
    loss: list[float] = []
    switch: list[float] = []
    step_down: list[float] = []
    partition_failover: list[float] = []
    with FederationBed(tmp, bound=3, max_clock_skew=1.0, operator_env=TIMINGS) as bed:
        print(f"bed up in {bed.bring_up_seconds:.1f}s", flush=True)
        until(lambda: leader(bed))
        for n in range(args.rounds):
            old = leader(bed)
            assert old is not None
            bed.kill_cluster(old)
            took = until(lambda old=old: leader(bed, exclude=old))  # type: ignore[misc]
            loss.append(took)
            print(f"cluster loss {n + 1}: {old} killed, {leader(bed)} leads after {took:.2f}s")
            bed.restart_cluster(old)
            time.sleep(2)
        for n in range(args.rounds):
            current = until(lambda: leader(bed)) and leader(bed)
            target = next(c for c in bed.names if c != current)
            bed.kube(target).kubectl(
                "annotate",
                "mreg",
                f"region-{target}",
                "-n",
                NAMESPACE,
                f"memoria.arcafutura.io/promote={time.time():.6f}",
                "--overwrite",
            )
            took = until(lambda target=target: bed.leading(target))  # type: ignore[misc]
            switch.append(took)
            print(f"switchover {n + 1}: {current} -> {target} in {took:.2f}s")
            time.sleep(1.5)
        for n in range(args.partitions):
            old = leader(bed)
            assert old is not None
            bed.isolate(old)
            start = time.monotonic()
            stepped = until(lambda old=old: not bed.leading(old))  # type: ignore[misc]
            new = until(lambda old=old: leader(bed, exclude=old))  # type: ignore[misc]
            step_down.append(stepped)
            partition_failover.append(time.monotonic() - start)
            print(
                f"partition {n + 1}: {old} cut off; stepped down after {stepped:.2f}s, "
                f"{leader(bed)} leads after {time.monotonic() - start:.2f}s (new: {new:.2f}s)"
            )
            bed.heal_all()
            time.sleep(3)
    print(f"Lease duration {DURATION:g}s, renew 1s, retry 0.5s, skew bound 1s (grant 3s)")
    print(summary("failover after losing the leader's cluster", loss))
    print(summary("switchover across clusters", switch))
    print(summary("cut-off leader stepped down", step_down))
    print(summary("failover after cutting the leader off", partition_failover))


if __name__ == "__main__":
    main()
