"""The main job: two Memoria regions on a local Kubernetes control plane, walked through.

Run by ``bash hack/demo.sh``. It starts, as real processes on loopback: etcd, kube-apiserver and
kube-controller-manager (built from the Go module proxy on first use, then cached), the
operator (``memoria-operator run``), a Redis primary with a ``replicaof`` Redis for region B
(the guide's topology), and each region's ``memoria serve`` (playing the pods, since no kubelet
runs here). Then it shows a write replicating, a private memory staying home, the daily
decrement running once, a switchover and a failover, ends with the user's day-2 view
(``kubectl memoria status``), and stops everything it started, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from . import LocalControlPlane, ManagedProcess, ensure_binaries, wait_until
from .cluster import install_crd, start_operator
from .harness import BED_OPERATOR_ENV
from .kube import KubeTarget
from .paths import CRD
from .plugin import kubectl_memoria, plugin_bin
from .regions import LEASE, RegionBed, region_bed

NAMESPACE = "memoria-demo"
BOUND = 3  # seconds a leader may be unhealthy before failover
MIDNIGHT_IN = 20  # seconds after the regions start, by their (offset) clocks


class Timeline:
    """Numbered steps with the seconds since the demo started."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.n = 0

    def step(self, text: str) -> None:
        self.n += 1
        print(f"\n[{time.monotonic() - self.start:6.1f}s] {self.n:2d}. {text}", flush=True)

    def note(self, text: str) -> None:
        for line in text.rstrip().splitlines():
            print(f"           {line}", flush=True)

    def timed(self, what: str, check: Callable[[], Any], timeout: float = 30) -> float:
        started = time.monotonic()
        wait_until(check, timeout, what, interval=0.05)
        took = time.monotonic() - started
        self.note(f"-> {what}: {took:.2f}s")
        return took


@contextmanager
def operator_process(plane: LocalControlPlane) -> Iterator[ManagedProcess]:
    proc = start_operator(
        plane.kubeconfig,
        plane.workdir / "operator.log",
        {**BED_OPERATOR_ENV, "MEMORIA_OPERATOR_ELECTION_NAMESPACE": NAMESPACE},
        "-n",
        NAMESPACE,
    )
    try:
        yield proc
    finally:
        proc.stop()


def seconds_to_next_midnight() -> float:
    now = dt.datetime.now(dt.UTC)
    midnight = dt.datetime.combine(now.date() + dt.timedelta(days=1), dt.time(), dt.UTC)
    return (midnight - now).total_seconds()


def show_regions(t: Timeline, kube: KubeTarget) -> None:
    t.note("$ kubectl get mreg -n memoria-demo -o wide")
    t.note(kube.kubectl("get", "mreg", "-n", NAMESPACE, "-o", "wide").stdout)


def holder(bed: RegionBed) -> str:
    return str(((bed.lease() or {}).get("spec") or {}).get("holderIdentity") or "nobody")


def x_of(proc: Any, memory_id: str) -> float:
    status, body = proc.request("GET", f"/memories/{memory_id}")
    return float(body["x_coord"]) if status == 200 else float("nan")


def walk_through(t: Timeline, kube: KubeTarget, bed: RegionBed) -> None:
    a, b = bed.processes["region-a"], bed.processes["region-b"]
    t.step("Both regions are up; region-a leads (spec.role: leader), region-b stands by")
    bed.wait_leader("region-a")
    show_regions(t, kube)
    t.note(
        f"Lease {LEASE}: holder {holder(bed)}, fencing token "
        f"{((bed.lease() or {}).get('spec') or {}).get('leaseTransitions')}"
    )

    t.step("A write in region-a reaches region-b (through Redis, region-b reads a replica)")
    mid = a.write("The harbour opens at six.", y=3)
    t.note(f"POST region-a /memories y_coord=3 -> id {mid}")
    t.timed("visible in region-b", lambda: b.request("GET", f"/memories/{mid}")[0] == 200)

    t.step("Privacy: a memory at y_coord=-12 stays in region-a (privacy floor 0)")
    private = a.write("My diagnosis.", y=-12)
    high = a.write("Above region-b's ceiling of 10.", y=12)
    marker = a.write("A later, shareable memory.", y=4)
    t.timed(
        "the later memory reached region-b",
        lambda: b.request("GET", f"/memories/{marker}")[0] == 200,
    )
    t.note(
        f"region-b has the y=-12 memory: {b.request('GET', f'/memories/{private}')[0] == 200}"
        f"; the y=12 one: {b.request('GET', f'/memories/{high}')[0] == 200}"
    )

    t.step(
        "Midnight: the leader decrements x_coord of every memory, once; the standby "
        "applies it from the sync event"
    )
    refused = b.request("POST", "/admin/decrement")
    t.note(f"region-b POST /admin/decrement -> {refused[0]}: {refused[1]['detail']}")
    before = x_of(a, mid)
    left = a.health()["scheduler"]["seconds_to_midnight"]
    t.note(
        f"x_coord of {mid[:8]} is {before}; the regions' clocks are set so that midnight "
        f"(UTC) comes in {left:.0f}s"
    )
    t.timed(
        "region-a decremented at midnight", lambda: x_of(a, mid) == before - 1, timeout=left + 30
    )
    t.timed("region-b applied it", lambda: x_of(b, mid) == before - 1)
    attempt = a.health()["scheduler"]["last_attempt"]
    again = a.request("POST", "/admin/decrement", {"date": attempt["date"]})[1]
    t.note(
        f"{attempt['date']}: {attempt['rows']} memories; the same date again -> "
        f"ran={again['ran']} ({again['reason']}): fenced, once per date"
    )
    t.note(f"x_coord of {mid[:8]}: region-a {x_of(a, mid)}, region-b {x_of(b, mid)}")

    t.step("Switchover: kubectl annotate mreg region-b memoria.arcafutura.io/promote=...")
    kube.kubectl(
        "annotate",
        "mreg",
        "region-b",
        "-n",
        NAMESPACE,
        "--overwrite",
        f"memoria.arcafutura.io/promote={int(time.time())}",
    )
    t.timed("region-b's scheduler leads", lambda: bed.leading("region-b") is True)
    t.note(f"region-a leads: {bed.leading('region-a')}; Lease holder: {holder(bed)}")
    show_regions(t, kube)

    t.step(f"Failover: region-b's process is killed; the operator waits {BOUND}s, then moves")
    b.kill()
    t.timed(
        "region-a's scheduler leads again",
        lambda: bed.leading("region-a") is True,
        timeout=BOUND + 20,
    )
    reason = bed.region("region-a")["status"]["leadership"].get("lastTransitionReason")
    t.note(f"Lease holder: {holder(bed)} (reason: {reason})")
    show_regions(t, kube)
    events = json.loads(kube.kubectl("get", "events", "-n", NAMESPACE, "-o", "json").stdout)
    lines = sorted(
        (e.get("lastTimestamp") or "", e["involvedObject"]["name"], e["reason"], e["message"])
        for e in events["items"]
        if e["reason"].startswith(("Leadership", "Switchover"))
    )
    t.note("Events:")
    for _, obj, reason, message in lines[-6:]:
        t.note(f"  {obj:9s} {reason:19s} {message[:80]}")


def day_two_view(
    t: Timeline, kube: KubeTarget, workdir: Path, namespace: str = NAMESPACE, why: str = ""
) -> None:
    """The user's day-2 view: the kubectl plugin, found by a real kubectl on PATH."""
    t.step("The day-2 view: kubectl memoria status (the plugin, found by kubectl on PATH)")
    t.note(f"$ kubectl memoria status -n {namespace}")
    proc = kubectl_memoria(kube, plugin_bin(workdir / "bin"), "status", "-n", namespace)
    t.note(proc.stdout or proc.stderr)
    t.note(f"(exit {proc.returncode}: 1 means a problem is listed above{why})")


def run(keep: bool) -> int:
    t = Timeline()
    t.step(
        "Building or reusing etcd, kube-apiserver, kube-controller-manager, kubectl "
        "(~/.cache/memoria-operator; the first build takes several minutes)"
    )
    binaries = ensure_binaries(("etcd", "kubernetes"))
    with ExitStack() as stack:
        try:
            t.step("Starting the local control plane (RBAC on, loopback only)")
            plane = LocalControlPlane(binaries)
            stack.callback(plane.stop)
            plane.start()
            kube = KubeTarget(plane.kubeconfig, binaries.kubectl, "local", plane)
            t.note(f"kube-apiserver {plane.server}; KUBECONFIG={plane.kubeconfig}")
            install_crd(kube, CRD)
            kube.kubectl("create", "namespace", NAMESPACE)
            t.step("Starting the operator, Redis (primary + replica) and two MemoriaRegions")
            stack.enter_context(operator_process(plane))
            tmp = Path(tempfile.mkdtemp(prefix="memoria-demo-"))
            stack.callback(shutil.rmtree, tmp, True)
            privacy = {
                "region-a": {"floor": 0, "ceiling": 15},
                "region-b": {"floor": 0, "ceiling": 10},
            }
            bed = stack.enter_context(
                region_bed(kube, NAMESPACE, tmp, bound=BOUND, privacy=privacy)
            )
            # the regions' clocks run a little ahead, so that midnight comes during the demo
            offset = str(seconds_to_next_midnight() - MIDNIGHT_IN)
            bed.extra_env = {
                n: {"MEMORIA_SCHEDULER__CLOCK_OFFSET_SECONDS": offset} for n in bed.ports
            }
            bed.bring_up()
            walk_through(t, kube, bed)
            day_two_view(t, kube, tmp, why="; region-b was killed")
            if keep:
                t.step(f"Keeping everything up; export KUBECONFIG={plane.kubeconfig}; Ctrl-C stops")
                while True:
                    time.sleep(3600)
        except KeyboardInterrupt:
            t.step("Interrupted")
        t.step("Stopping every process and removing the temporary files")
    print(f"\nDone in {time.monotonic() - t.start:.0f}s.", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m testbed.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--keep", action="store_true", help="keep running until Ctrl-C")
    parser.add_argument(
        "--process",
        action="store_true",
        help="the light mode: processes stand in for pods (the default where no node can run)",
    )
    args = parser.parse_args(argv)
    from .node import missing_prerequisites

    missing = missing_prerequisites()
    if not args.process and not missing:
        from .demo_node import run as run_on_node

        return run_on_node(args.keep)
    why = "--process" if args.process else f"no node here: missing {', '.join(missing)}"
    print(f"Mode: process ({why}): memoria serve processes stand in for pods", flush=True)
    return run(args.keep)


if __name__ == "__main__":
    sys.exit(main())
