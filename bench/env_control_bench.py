"""Switchover and failover with ``spec.scheduler.control: env`` next to ``lease``, in one run.

    .venv/bin/python bench/env_control_bench.py [--rounds 5] [--bound 5]

One local control plane, the operator as its own process (4 s Lease, 1 s renew, 0.5 s retry,
as bench/leadership_bench.py), and for each mode a bed of two real region processes: ``lease``
regions follow the Lease live; ``env`` regions run in the guide's mode and are restarted by the
test bed's rollout player whenever their Deployment changes (testbed/rollouts.py: the old
process exits before the new one starts, as a Recreate rollout). Every time is from the fault
or the request until the new leader's own /healthz says its decrement timer is armed.

* failover: SIGKILL the leader's process. ``lease``: it is started again once the standby
  leads; ``env``: the operator's rollout of DISABLE_SCHEDULERS=true brings it back by itself.
* switchover: annotate the standby.

Process mode measures the operator's part plus a process restart per rollout; on a real node a
rollout adds pod deletion, scheduling and the image's start (see docs/leadership.md for the
bound).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from leadership_bench import TIMINGS, pct  # the same operator timings, the same percentile

from testbed.cluster import operator_on_local_plane
from testbed.kube import KubeTarget
from testbed.regions import NAMES, RegionBed, region_bed


def wait_armed(bed: RegionBed, name: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if bed.scheduling(name) and bed.holder() == f"{bed.namespace}/{name}":
            return
        time.sleep(0.02)
    raise TimeoutError(f"{name} did not lead within {timeout}s")


def wait_quiet(bed: RegionBed, standby: str, timeout: float = 60) -> None:
    """A steady state: the standby runs with its timer off (after its own rollout, in env)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if bed.scheduling(standby) is False:
            time.sleep(1.5)  # renewed and probed
            return
        time.sleep(0.05)
    raise TimeoutError(f"{standby} never settled as a standby")


def measure(kube: KubeTarget, mode: str, rounds: int, bound: int) -> dict[str, list[float]]:
    ns = kube.create_namespace(f"bench-{mode}")
    tmp = Path(tempfile.mkdtemp(prefix=f"memoria-envbench-{mode}-"))
    scheduler = {name: {"control": mode} for name in NAMES}
    with region_bed(kube, ns, tmp, bound=bound, scheduler=scheduler) as bed:
        bed.bring_up()
        leader, standby = "region-a", "region-b"
        wait_armed(bed, leader)
        failovers = []
        for _ in range(rounds):
            wait_quiet(bed, standby)
            started = time.monotonic()
            bed.processes[leader].kill()
            wait_armed(bed, standby)
            failovers.append(time.monotonic() - started)
            if mode == "lease":
                bed.start(leader)
            leader, standby = standby, leader
        switchovers = []
        for i in range(rounds):
            wait_quiet(bed, standby)
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
            wait_armed(bed, standby)
            switchovers.append(time.monotonic() - started)
            leader, standby = standby, leader
    return {"failover": failovers, "switchover": switchovers}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--bound", type=int, default=5)
    args = parser.parse_args()
    results = {}
    with operator_on_local_plane(TIMINGS, "--no-leader-election") as (_, kube, _operator):
        for mode in ("lease", "env"):
            results[mode] = measure(kube, mode, args.rounds, args.bound)
    print(
        f"{args.rounds} rounds each, bound {args.bound}s, Lease 4s, retry 0.5s; "
        "until the new leader's timer is armed"
    )
    print(f"{'':12}{'lease p50':>11}{'lease p99':>11}{'env p50':>11}{'env p99':>11}")
    for what in ("switchover", "failover"):
        lease, env = results["lease"][what], results["env"][what]
        print(
            f"{what:12}{statistics.median(lease):>10.2f}s{pct(lease, 0.99):>10.2f}s"
            f"{statistics.median(env):>10.2f}s{pct(env, 0.99):>10.2f}s"
        )


if __name__ == "__main__":
    main()
