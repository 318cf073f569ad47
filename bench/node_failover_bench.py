"""Failover and switchover on real pods (the test bed's node), with a client writing through the
group endpoint the whole time.

    sudo .venv/bin/python bench/node_failover_bench.py [--rounds 10] [--bound 5]

Uses the node of ``python -m testbed up --node`` if one is up (else starts one and stops it at the
end), installs the chart with Helm (our local image), runs Redis as pods (primary + replica, the
guide's topology) and two MemoriaRegions with ``spec.failover.unhealthyAfterSeconds = --bound``.
Operator Lease: 4 s, renewed every 1 s, tick 0.5 s.

Each round faults whichever region leads, once by freezing its container's main process
(SIGSTOP from the host, SIGCONT after) and once by deleting its pod, and times from the fault to
the other region's own /healthz saying its scheduler leads (and the Lease naming it). Then
``--rounds`` switchovers by annotation, timed the same way. During every fault a client POSTs
memories to the ``memoria-default-rw`` ClusterIP without pause (one request at a time, 1 s
timeout): the error window is the time from the last 2xx before the first failure to the first
2xx after the last failure; every 2xx write's id is then looked up in the region that leads
after the fault (the survivor) and in both regions.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field

from testbed.kube import KubeTarget
from testbed.node import NodeCluster, RunningNode, node_is_healthy, read_state
from testbed.onnode import (
    GROUP_ENDPOINT,
    PROMOTE_ANNOTATION,
    SCHEDULER_LEASE,
    cluster_ip,
    container_pid,
    deploy_redis_pair,
    endpoint_ips,
    ensure_redis_image,
    eventually,
    helm,
    http,
    install_operator,
    lease_holder,
    mreg_row,
    ready_pod,
    region_manifest,
    scheduler_leading,
    wait_namespace_ready,
)

REGIONS = ("region-a", "region-b")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


@dataclass
class Writer:
    """POSTs to the group endpoint one request after another until stopped."""

    url: str
    ok: list[tuple[float, str]] = field(default_factory=list)  # (time, memory id)
    failed: list[tuple[float, str]] = field(default_factory=list)  # (time, why)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            t = time.monotonic()
            try:
                status, body = http(
                    "POST", f"{self.url}/memories", {"text": f"w{n}", "y_coord": 0}, timeout=1.0
                )
            except OSError as exc:
                self.failed.append((t, type(exc).__name__))
                time.sleep(0.02)
                continue
            if 200 <= status < 300 and isinstance(body, dict):
                self.ok.append((t, str(body["id"])))
            else:
                self.failed.append((t, f"HTTP {status}"))
                time.sleep(0.02)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def error_window(self) -> float:
        if not self.failed:
            return 0.0
        first, last = self.failed[0][0], self.failed[-1][0]
        before = [t for t, _ in self.ok if t < first]
        after = [t for t, _ in self.ok if t > last]
        start = before[-1] if before else first
        end = after[0] if after else last
        return end - start


class Bed:
    def __init__(self, kube: KubeTarget, node: RunningNode, ns: str) -> None:
        self.kube, self.node, self.ns = kube, node, ns

    def key(self, region: str) -> str:
        return f"{self.ns}/{region}"

    def leader(self) -> str:
        holder = lease_holder(self.kube, self.ns, SCHEDULER_LEASE) or ""
        return holder.split("/", 1)[-1]

    def leads(self, region: str) -> bool:
        if lease_holder(self.kube, self.ns, SCHEDULER_LEASE) != self.key(region):
            return False
        pod = ready_pod(self.kube, self.ns, region)
        return pod is not None and scheduler_leading(pod["status"]["podIP"])

    def settled(self, leader: str, timeout: float = 240) -> None:
        other = REGIONS[1] if leader == REGIONS[0] else REGIONS[0]

        def ok() -> bool:
            pod = ready_pod(self.kube, self.ns, leader)
            return (
                self.leads(leader)
                and pod is not None
                and endpoint_ips(self.kube, self.ns, GROUP_ENDPOINT) == {pod["status"]["podIP"]}
                and ready_pod(self.kube, self.ns, other) is not None
                and mreg_row(self.kube, self.ns, other).get("READY") == "True"
                and mreg_row(self.kube, self.ns, leader).get("READY") == "True"
            )

        try:
            eventually(ok, timeout, f"{leader} leading, both Ready", 0.5)
        except AssertionError:  # say what every view showed, for whoever reads the log
            print(self.kube.kubectl("get", "mreg,pods", "-n", self.ns, "-o", "wide").stdout)
            print("endpoint:", endpoint_ips(self.kube, self.ns, GROUP_ENDPOINT))
            print("lease holder:", lease_holder(self.kube, self.ns, SCHEDULER_LEASE))
            events = self.kube.kubectl("get", "events", "-n", self.ns, "--sort-by=.lastTimestamp")
            print("\n".join(events.stdout.splitlines()[-25:]))
            raise

    def region_url(self, region: str) -> str:
        return f"http://{cluster_ip(self.kube, self.ns, f'memoria-{region}')}:8080"

    def missing(self, ids: list[str], region: str) -> list[str]:
        url = self.region_url(region)
        gone = []
        for memory_id in ids:
            # a connection reset right after a fault is not an answer: ask again
            status, _ = eventually(
                lambda m=memory_id: http("GET", f"{url}/memories/{m}", timeout=3), 30, "a read"
            )
            if status != 200:
                gone.append(memory_id)
        return gone


@dataclass
class Round:
    kind: str
    seconds: float
    window: float
    acked: int
    failed: int
    lost_survivor: int
    lost_everywhere: int


def one_round(bed: Bed, kind: str, group_url: str) -> Round:
    old = bed.leader()
    new = REGIONS[1] if old == REGIONS[0] else REGIONS[0]
    bed.settled(old)
    writer = Writer(group_url)
    writer.start()
    time.sleep(1.0)  # some writes before the fault
    pod = ready_pod(bed.kube, bed.ns, old)
    assert pod is not None
    pid = container_pid(bed.node, pod)
    if kind == "freeze":
        os.kill(pid, signal.SIGSTOP)
    elif kind == "delete":
        bed.kube.kubectl("delete", "pod", pod["metadata"]["name"], "-n", bed.ns, "--wait=false")
    else:
        bed.kube.kubectl(
            "annotate",
            "mreg",
            new,
            "-n",
            bed.ns,
            "--overwrite",
            f"{PROMOTE_ANNOTATION}={uuid.uuid4().hex[:8]}",
        )
    start = time.monotonic()
    try:
        eventually(lambda: bed.leads(new), 120, f"{new} leading", 0.05)
        seconds = time.monotonic() - start
        # the client keeps writing until the group endpoint serves the new leader for a while
        new_pod = ready_pod(bed.kube, bed.ns, new)
        assert new_pod is not None
        eventually(
            lambda: endpoint_ips(bed.kube, bed.ns, GROUP_ENDPOINT) == {new_pod["status"]["podIP"]},
            60,
            "the group endpoint on the new leader",
            0.1,
        )
        time.sleep(2.0)
    finally:
        if kind == "freeze":
            os.kill(pid, signal.SIGCONT)
        writer.stop()
    bed.settled(new)
    time.sleep(2.0)  # replication of the last writes
    ids = [memory_id for _, memory_id in writer.ok]
    lost_survivor = bed.missing(ids, new)
    lost_everywhere = [m for m in lost_survivor if m in set(bed.missing(lost_survivor, old))]
    return Round(
        kind,
        seconds,
        writer.error_window(),
        len(ids),
        len(writer.failed),
        len(lost_survivor),
        len(lost_everywhere),
    )


def report(rounds: list[Round], kind: str, bound: int) -> None:
    mine = [r for r in rounds if r.kind == kind]
    if not mine:
        return
    times = [r.seconds for r in mine]
    windows = [r.window for r in mine]
    print(
        f"{kind:10s} n={len(mine):2d}  to standby's scheduler: p50 {statistics.median(times):.2f}s"
        f" p99 {pct(times, 0.99):.2f}s (bound {bound}s)  client error window: p50"
        f" {statistics.median(windows):.2f}s p99 {pct(windows, 0.99):.2f}s  2xx writes"
        f" {sum(r.acked for r in mine)}, failed requests {sum(r.failed for r in mine)}, 2xx lost:"
        f" {sum(r.lost_survivor for r in mine)} not in the survivor,"
        f" {sum(r.lost_everywhere for r in mine)} in neither region",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--bound", type=int, default=5)
    parser.add_argument(
        "--kinds", default="freeze,delete,switchover", help="comma-separated: which drills"
    )
    args = parser.parse_args()
    state = read_state()
    cluster: NodeCluster | None = None
    if state and state.get("detached") and node_is_healthy(state):
        node = RunningNode.from_state(state)
    else:
        cluster = NodeCluster()
        cluster.start()
        node = cluster.running()
    kube = node.kube
    system_ns = f"memoria-bench-{uuid.uuid4().hex[:6]}"
    ns = ""
    try:
        install_operator(kube, node.image, system_ns)
        ns = kube.create_namespace("bench")
        wait_namespace_ready(kube, ns)
        redis = ensure_redis_image(node)
        primary, replica = deploy_redis_pair(kube, ns, redis.ref)
        for name, role, redis_ip, priority in (
            ("region-a", "leader", primary, 200),
            ("region-b", "standby", replica, 100),
        ):
            kube.apply(
                region_manifest(
                    name, role, redis_ip, priority=priority, unhealthy_after=args.bound
                ),
                ns,
            )
        bed = Bed(kube, node, ns)
        bed.settled("region-a", 300)
        group_url = f"http://{cluster_ip(kube, ns, GROUP_ENDPOINT)}:8080"
        rounds: list[Round] = []
        kinds = [k for k in args.kinds.split(",") if k]
        try:
            for i in range(args.rounds):
                for kind in kinds:
                    r = one_round(bed, kind, group_url)
                    rounds.append(r)
                    print(
                        f"round {i + 1} {kind:10s} {r.seconds:5.2f}s  window {r.window:5.2f}s"
                        f"  2xx {r.acked:4d}  failed {r.failed:3d}"
                        f"  lost(survivor) {r.lost_survivor}  lost(both) {r.lost_everywhere}",
                        flush=True,
                    )
        except KeyboardInterrupt:
            print("interrupted: the figures cover the rounds completed", flush=True)
        print(
            f"\nnode failover bench, {len(rounds)} drill(s), bound {args.bound}s, operator"
            " Lease 4 s / renew 1 s / tick 0.5 s"
        )
        for kind in kinds:
            report(rounds, kind, args.bound)
    finally:
        if ns:
            kube.kubectl("delete", "mreg", "--all", "-n", ns, "--wait=false", check=False)
            kube.delete_namespace(ns)
        helm(kube, "uninstall", "memoria", "-n", system_ns, "--wait", check=False)
        kube.delete_namespace(system_ns)
        if cluster is not None:
            cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
