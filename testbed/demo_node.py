"""The demo on real pods: the test bed's node (kubelet, containerd, CNI, kube-proxy), the chart
installed by Helm with our image built locally, Redis as pods (primary + ``--replicaof``
replica), two MemoriaRegions as pods; then a write replicating, a failover after the leader's
pod is deleted, and a region that is really down (its container frozen) shown as not Ready.

Run by ``bash hack/demo.sh`` where the machine can run a node (root, the node's packages);
``--process`` keeps the light mode of :mod:`testbed.demo` (processes standing in for pods).
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from contextlib import ExitStack

from .demo import Timeline, day_two_view
from .kube import KubeTarget
from .node import NodeCluster, RunningNode, node_is_healthy, read_state
from .onnode import (
    GROUP_ENDPOINT,
    SCHEDULER_LEASE,
    cluster_ip,
    container_pid,
    deploy_redis_pair,
    endpoint_ips,
    ensure_redis_image,
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

NAMESPACE = "memoria-demo"
BOUND = 5  # spec.failover.unhealthyAfterSeconds


def _show(t: Timeline, kube: KubeTarget, *args: str) -> None:
    t.note(f"$ kubectl {' '.join(args)}")
    t.note(kube.kubectl(*args).stdout)


def _leads(kube: KubeTarget, region: str) -> bool:
    if lease_holder(kube, NAMESPACE, SCHEDULER_LEASE) != f"{NAMESPACE}/{region}":
        return False
    pod = ready_pod(kube, NAMESPACE, region)
    return pod is not None and scheduler_leading(pod["status"]["podIP"])


def cleanup(kube: KubeTarget, system_ns: str) -> None:
    print(f"cleaning up: namespace {NAMESPACE}, helm uninstall -n {system_ns}", flush=True)
    kube.kubectl("delete", "mreg", "--all", "-n", NAMESPACE, "--wait=false", check=False)
    kube.kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", check=False, timeout=120)
    helm(kube, "uninstall", "memoria", "-n", system_ns, "--wait", check=False)
    kube.delete_namespace(system_ns)


def walk_through(t: Timeline, kube: KubeTarget, node: RunningNode, system_ns: str) -> None:
    t.step("Installing the operator with Helm (image built from the Dockerfile, no registry)")
    release = install_operator(
        kube,
        node.image,
        system_ns,
        extra=("--set-json", f'operator.watchNamespaces=["{NAMESPACE}"]'),
    )
    _show(t, kube, "get", "pods", "-n", release.namespace)

    t.step("Redis as pods: redis-a (primary) and redis-b (--replicaof redis-a), then 2 regions")
    kube.kubectl("create", "namespace", NAMESPACE, check=False)  # a crashed run's may be left
    wait_namespace_ready(kube, NAMESPACE)
    primary, replica = deploy_redis_pair(kube, NAMESPACE, ensure_redis_image(node).ref)
    kube.apply(
        region_manifest("region-a", "leader", primary, priority=200, unhealthy_after=BOUND),
        NAMESPACE,
    )
    kube.apply(
        region_manifest(
            "region-b", "standby", replica, priority=100, ceiling=10, unhealthy_after=BOUND
        ),
        NAMESPACE,
    )
    t.timed(
        "region-a leads, both pods Ready",
        lambda: _leads(kube, "region-a") and ready_pod(kube, NAMESPACE, "region-b") is not None,
        timeout=300,
    )
    _show(t, kube, "get", "pods", "-n", NAMESPACE, "-o", "wide")
    _show(t, kube, "get", "mreg", "-n", NAMESPACE, "-o", "wide")

    t.step(f"A write through the group endpoint {GROUP_ENDPOINT} reaches region-b")
    group = f"http://{cluster_ip(kube, NAMESPACE, GROUP_ENDPOINT)}:8080"
    b_url = f"http://{cluster_ip(kube, NAMESPACE, 'memoria-region-b')}:8080"
    status, body = http(
        "POST", f"{group}/memories", {"text": "The harbour opens at six.", "y_coord": 3}
    )
    t.note(f"POST {group}/memories -> {status}, id {body['id']}")
    t.timed("visible in region-b", lambda: http("GET", f"{b_url}/memories/{body['id']}")[0] == 200)

    t.step(f"Failover: region-a's pod is deleted; the bound is {BOUND}s")
    pod = ready_pod(kube, NAMESPACE, "region-a")
    assert pod is not None
    kube.kubectl("delete", "pod", pod["metadata"]["name"], "-n", NAMESPACE, "--wait=false")
    t.timed("region-b's scheduler leads", lambda: _leads(kube, "region-b"), timeout=BOUND + 30)
    b_pod = ready_pod(kube, NAMESPACE, "region-b")
    assert b_pod is not None
    t.timed(
        "the group endpoint serves region-b's pod only",
        lambda: endpoint_ips(kube, NAMESPACE, GROUP_ENDPOINT) == {b_pod["status"]["podIP"]},
    )
    _show(t, kube, "get", "mreg", "-n", NAMESPACE, "-o", "wide")
    t.timed(
        "region-a's new pod Ready, as a standby (no automatic failback)",
        lambda: mreg_row(kube, NAMESPACE, "region-a").get("READY") == "True",
        timeout=180,
    )
    _show(t, kube, "get", "pods", "-n", NAMESPACE, "-o", "wide")

    t.step("A region really down: region-a's container frozen (SIGSTOP from the host)")
    pod = ready_pod(kube, NAMESPACE, "region-a")
    assert pod is not None
    pid = container_pid(node, pod)
    os.kill(pid, signal.SIGSTOP)
    try:
        t.timed(
            "kubectl get mreg shows region-a READY False",
            lambda: mreg_row(kube, NAMESPACE, "region-a").get("READY") == "False",
            60,
        )
        _show(t, kube, "get", "mreg", "-n", NAMESPACE, "-o", "wide")
    finally:
        os.kill(pid, signal.SIGCONT)
    t.timed(
        "region-a Ready again once thawed",
        lambda: mreg_row(kube, NAMESPACE, "region-a").get("READY") == "True",
        120,
    )
    day_two_view(t, kube, node.workdir, NAMESPACE)


def run(keep: bool) -> int:
    t = Timeline()
    t.step("Mode: node (real pods on a local one-node Kubernetes); --process for the light mode")
    with ExitStack() as stack:
        state = read_state()
        if state and state.get("detached") and node_is_healthy(state):
            node = RunningNode.from_state(state)
            t.note("using the node of 'python -m testbed up --node'")
        else:
            t.note("starting a node (first run: images built, about 4.5 minutes)")
            cluster = NodeCluster()
            stack.callback(cluster.stop)
            cluster.start()
            node = cluster.running()
        kube = node.kube
        t.note(f"KUBECONFIG={node.kubeconfig}")
        _show(t, kube, "get", "nodes", "-o", "wide")
        system_ns = f"memoria-system-{uuid.uuid4().hex[:4]}"
        stack.callback(cleanup, kube, system_ns)
        try:
            walk_through(t, kube, node, system_ns)
            if keep:
                t.step(f"Keeping the node up; export KUBECONFIG={node.kubeconfig}; Ctrl-C stops")
                while True:
                    time.sleep(3600)
        except KeyboardInterrupt:
            t.step("Interrupted")
        t.step("Stopping what the demo started")
    print(f"\nDone in {time.monotonic() - t.start:.0f}s (node mode).", flush=True)
    return 0
