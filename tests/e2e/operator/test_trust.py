"""Trust boundaries the API server enforces for the operator (issue 15, rows 2 and 7), on a real
API server with the operator running: a region's own identity cannot change its region, asks
for promotion through its ConfigMap, and the operator never takes over an object it did not
create."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kopf.testing import KopfRunner

from testbed import wait_until
from testbed.cluster import condition, get, mark_available
from testbed.harness import running_operator
from testbed.kube import KubeTarget
from testbed.paths import SAMPLES

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def operator(crd_installed: KubeTarget) -> Iterator[KopfRunner]:
    with running_operator(crd_installed) as runner:
        yield runner


def _can_i(kube: KubeTarget, namespace: str, who: str, verb: str, what: str) -> bool:
    proc = kube.kubectl(
        "auth", "can-i", verb, what, "-n", namespace,
        f"--as=system:serviceaccount:{namespace}:{who}",
        check=False,
    )  # fmt: skip
    return proc.stdout.strip() == "yes"


def test_a_region_s_identity_can_ask_for_promotion_and_nothing_else(
    operator: KopfRunner, crd_installed: KubeTarget, namespace: str
) -> None:
    kube = crd_installed
    kube.kubectl("apply", "-n", namespace, "-f", str(SAMPLES / "region-a.yaml"))
    wait_until(lambda: get(kube, "role", "memoria-region-a", namespace), what="Role")
    sa = "memoria-region-a"
    assert _can_i(kube, namespace, sa, "patch", "configmaps/memoria-region-a-promote")
    assert _can_i(kube, namespace, sa, "get", "leases/memoria-scheduler-default")
    assert not _can_i(kube, namespace, sa, "patch", "memoriaregions/region-a")
    assert not _can_i(kube, namespace, sa, "update", "memoriaregions/region-a")
    assert not _can_i(kube, namespace, sa, "patch", "configmaps/some-other-app")
    assert not _can_i(kube, namespace, sa, "get", "secrets")
    assert not _can_i(kube, namespace, sa, "create", "pods")
    assert not _can_i(kube, namespace, sa, "patch", "deployments/memoria-region-a")

    # the request travels: a value written to the ConfigMap becomes the promote annotation
    kube.kubectl(
        "patch", "configmap", "memoria-region-a-promote", "-n", namespace,
        f"--as=system:serviceaccount:{namespace}:{sa}",
        "--type=merge", "-p", '{"data": {"requested": "4102444800.000001"}}',
    )  # fmt: skip

    def carried() -> bool:
        region = get(kube, "mreg", "region-a", namespace) or {}
        annotations = region.get("metadata", {}).get("annotations") or {}
        return annotations.get("memoria.arcafutura.io/promote") == "4102444800.000001"

    wait_until(carried, what="the promote annotation")
    # an older value (a replay) never undoes it
    kube.kubectl(
        "patch", "configmap", "memoria-region-a-promote", "-n", namespace,
        "--type=merge", "-p", '{"data": {"requested": "1000.0"}}',
    )  # fmt: skip
    import time

    time.sleep(2)
    assert carried()


def test_the_operator_never_takes_over_a_foreign_object(
    operator: KopfRunner, crd_installed: KubeTarget, namespace: str
) -> None:
    kube = crd_installed
    # an admin's Role that happens to have the name the operator would give a region's Role
    kube.kubectl(
        "create", "role", "memoria-victim", "--verb=get", "--resource=configmaps", "-n", namespace
    )
    before = get(kube, "role", "memoria-victim", namespace)
    assert before is not None
    body = (SAMPLES / "region-a.yaml").read_text().replace("name: region-a", "name: victim", 1)
    kube.kubectl("apply", "-n", namespace, "-f", "-", stdin=body)

    def conflict() -> bool:
        cond = condition(get(kube, "mreg", "victim", namespace), "ResourcesOwned")
        return cond is not None and cond["status"] == "False"

    wait_until(conflict, what="ResourcesOwned=False")
    region = get(kube, "mreg", "victim", namespace)
    cond = condition(region, "ResourcesOwned")
    assert cond is not None and cond["reason"] == "Conflict"
    assert "Role memoria-victim" in cond["message"]
    ready = condition(region, "Ready")
    assert ready is not None and ready["status"] == "False"
    role = get(kube, "role", "memoria-victim", namespace)
    assert role is not None
    assert role["rules"] == before["rules"]  # not overwritten
    assert get(kube, "deployment", "memoria-victim", namespace) is None  # nothing rolled out
    kube.kubectl("delete", "mreg", "victim", "-n", namespace, "--wait=true")
    assert get(kube, "role", "memoria-victim", namespace) is not None  # nor collected


def test_no_rollout_while_a_secret_is_missing(
    operator: KopfRunner, crd_installed: KubeTarget, namespace: str
) -> None:
    kube = crd_installed
    body = (SAMPLES / "region-a.yaml").read_text().replace("name: region-a", "name: lonely", 1)
    kube.kubectl("apply", "-n", namespace, "-f", "-", stdin=body)
    wait_until(lambda: get(kube, "deployment", "memoria-lonely", namespace), what="deployment")
    mark_available(kube, namespace, "memoria-lonely")
    kube.kubectl(
        "patch", "mreg", "lonely", "-n", namespace, "--type=merge",
        "-p", '{"spec": {"apiKeySecretRef": {"name": "not-there"}}}',
    )  # fmt: skip

    def missing() -> bool:
        cond = condition(get(kube, "mreg", "lonely", namespace), "SecretsAvailable")
        return cond is not None and cond["reason"] == "SecretMissing"

    wait_until(missing, what="SecretsAvailable=False")
    deployment = get(kube, "deployment", "memoria-lonely", namespace) or {}
    env = deployment["spec"]["template"]["spec"]["containers"][0].get("env") or []
    assert all(e["name"] != "MEMORIA_API_KEY" for e in env)  # the old template stays
