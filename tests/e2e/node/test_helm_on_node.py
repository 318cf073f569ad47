"""The chart as a user installs it, on a real node: ``helm install`` with our local image, the
operator running as a pod (Ready by its real /readyz), in-cluster credentials only, its own Lease,
no Forbidden from the API server while it reconciles a region (the chart's RBAC is enough), and a
new operator pod taking over when the running one is deleted."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from testbed import wait_until
from testbed.kube import KubeTarget
from testbed.node import RunningNode
from testbed.onnode import (
    OperatorRelease,
    eventually,
    forbidden_lines,
    lease_holder,
    logs,
    operator_pods,
    region_manifest,
    wait_namespace_ready,
)

pytestmark = [pytest.mark.e2e, pytest.mark.node]


@pytest.fixture(scope="module")
def kube(node_cluster: RunningNode) -> KubeTarget:
    return node_cluster.kube


def _the_operator_pod(kube: KubeTarget, rel: OperatorRelease) -> dict[str, Any]:
    pods = operator_pods(kube, rel)
    assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
    return pods[0]


def _ready(pod: dict[str, Any]) -> bool:
    conditions = {c["type"]: c["status"] for c in pod["status"].get("conditions") or []}
    return pod["status"].get("phase") == "Running" and conditions.get("Ready") == "True"


@pytest.fixture(scope="module")
def probe_region(kube: KubeTarget, node_operator: OperatorRelease) -> Iterator[tuple[str, str]]:
    """A MemoriaRegion the operator must reconcile: Deployment, Service, ServiceAccount, Role,
    RoleBinding, claim, group Service, scheduler Lease, status, Events; each needs RBAC."""
    ns = kube.create_namespace("helm-node")
    wait_namespace_ready(kube, ns)
    # the region's Redis is absent (its pod stays degraded): only the operator's work matters
    kube.apply(
        region_manifest("rbac-probe", "leader", "127.0.0.1", priority=100, unhealthy_after=10), ns
    )
    yield ns, "rbac-probe"
    kube.kubectl("delete", "mreg", "--all", "-n", ns, "--wait=false", check=False)
    kube.delete_namespace(ns)


def test_the_operator_pod_is_running_and_ready_by_its_readyz(
    kube: KubeTarget, node_operator: OperatorRelease, node_cluster: RunningNode
) -> None:
    # the release may be shared with a module that replaced its pod moments ago (the
    # switchover drill kills it): the one pod there is becomes Ready by its /readyz
    last: dict[str, Any] = {}

    def ready_pod() -> dict[str, Any] | None:
        last["pod"] = _the_operator_pod(kube, node_operator)
        return last["pod"] if _ready(last["pod"]) else None

    pod = wait_until(
        ready_pod, 60, "the operator pod Ready", 0.5, lambda: str(last["pod"]["status"])
    )
    container = pod["spec"]["containers"][0]
    assert container["image"] == node_cluster.image
    assert container["imagePullPolicy"] == "Never"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    status = pod["status"]["containerStatuses"][0]
    assert status["ready"] is True and status["restartCount"] == 0, status


def test_the_operator_uses_in_cluster_credentials_and_holds_its_lease(
    kube: KubeTarget, node_operator: OperatorRelease
) -> None:
    pod = _the_operator_pod(kube, node_operator)
    name = pod["metadata"]["name"]
    # no kubeconfig anywhere: only the ServiceAccount token the kubelet mounts
    container = pod["spec"]["containers"][0]
    env = {e["name"] for e in container.get("env") or []}
    assert "KUBECONFIG" not in env
    assert pod["spec"]["serviceAccountName"] == node_operator.deployment
    mounts = {m["mountPath"] for m in container.get("volumeMounts") or []}
    assert "/var/run/secrets/kubernetes.io/serviceaccount" in mounts
    # ...and with it the operator took its own Lease (identity: <hostname = pod name>_<pid>_...)
    holder = eventually(
        lambda: lease_holder(kube, node_operator.namespace, node_operator.election_lease),
        30,
        "the operator Lease",
    )
    assert holder.startswith(f"{name}_"), holder


def test_the_chart_rbac_is_enough_no_forbidden_while_reconciling(
    kube: KubeTarget, node_operator: OperatorRelease, probe_region: tuple[str, str]
) -> None:
    ns, name = probe_region

    def reconciled() -> bool:
        kinds = ("deployment", "service", "serviceaccount", "role", "rolebinding", "pvc")
        for kind in kinds:
            if kube.kubectl(
                "get",
                kind,
                f"memoria-{name}" + ("-data" if kind == "pvc" else ""),
                "-n",
                ns,
                check=False,
            ).returncode:
                return False
        region = kube.get_json("mreg", name, "-n", ns)
        leadership = (region.get("status") or {}).get("leadership") or {}
        return leadership.get("holder") == f"{ns}/{name}" and bool(
            kube.kubectl("get", "service", "memoria-default-rw", "-n", ns, check=False).returncode
            == 0
        )

    eventually(reconciled, 90, "the region reconciled by the operator pod", 1)
    assert lease_holder(kube, ns, "memoria-scheduler-default") == f"{ns}/{name}"
    time.sleep(5)  # a few resyncs and renewals more
    pod = _the_operator_pod(kube, node_operator)["metadata"]["name"]
    text = logs(kube, node_operator.namespace, pod)
    assert text, "no operator log"
    bad = forbidden_lines(text)
    assert not bad, "\n".join(bad[:20])


def test_a_deleted_operator_pod_is_replaced_and_the_new_one_takes_over(
    kube: KubeTarget, node_operator: OperatorRelease, probe_region: tuple[str, str]
) -> None:
    old = _the_operator_pod(kube, node_operator)["metadata"]["name"]
    kube.kubectl("delete", "pod", old, "-n", node_operator.namespace, "--wait=false")

    def new_ready() -> str | None:
        pods = [p for p in operator_pods(kube, node_operator) if p["metadata"]["name"] != old]
        return pods[0]["metadata"]["name"] if pods and _ready(pods[0]) else None

    new = eventually(new_ready, 120, "a new Ready operator pod", 0.5)
    holder = eventually(
        lambda: (
            (h := lease_holder(kube, node_operator.namespace, node_operator.election_lease))
            and h.startswith(f"{new}_")
            and h
        ),
        60,
        "the new pod holding the operator Lease",
    )
    assert holder.startswith(f"{new}_")
    # and it acts: a change to the region is reconciled by the new pod
    ns, name = probe_region
    kube.kubectl("delete", "service", f"memoria-{name}", "-n", ns)
    eventually(
        lambda: (
            kube.kubectl("get", "service", f"memoria-{name}", "-n", ns, check=False).returncode == 0
        ),
        60,
        "the region's Service recreated by the new operator pod",
        0.5,
    )
