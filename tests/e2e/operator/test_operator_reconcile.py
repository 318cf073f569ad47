"""Operator I on a real API server: MemoriaRegions become running regions and stay that way."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kopf.testing import KopfRunner

from testbed import wait_until
from testbed.cluster import (
    condition,
    env_of,
    events_for,
    get,
    mark_available,
    parse_table,
    secret,
)
from testbed.harness import running_operator
from testbed.kube import KubeTarget
from testbed.paths import SAMPLES
from testbed.regions import region_manifest

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def operator(crd_installed: KubeTarget) -> Iterator[KopfRunner]:
    with running_operator(crd_installed) as runner:
        yield runner


def deployment(kube: KubeTarget, ns: str, name: str) -> dict[str, Any] | None:
    return get(kube, "deployment", f"memoria-{name}", ns)


EXPECTED_A = {
    "MEMORIA_REGION": "region-a",
    "MEMORIA_HOST": "0.0.0.0",
    "MEMORIA_PORT": "8080",
    "MEMORIA_SYNC__ENABLED": "true",
    "MEMORIA_SYNC__BACKEND": "redis",
    "MEMORIA_SYNC__CONNECTION_URL": "redis://redis-a:6379/0",
    "MEMORIA_SYNC__CHANNEL": "memoria-sync",
    "MEMORIA_SYNC__PRIVACY_FLOOR": "0",
    "MEMORIA_SYNC__PRIVACY_CEILING": "15",
    "MEMORIA_SYNC__REALTIME_REPLICATION": "true",
    "MEMORIA_SYNC__REPLICA_PROMOTION": "leader",
    "DECREMENT_TZ": "America/New_York",
    "DISABLE_SCHEDULERS": "false",
    "MEMORIA_DATABASE__CONNECTION_STRING": "sqlite:////var/lib/memoria/memoria.db",
    "MEMORIA_LEADERSHIP__LEASE_NAME": "memoria-scheduler-default",
}


def test_samples_become_deployments_services_and_ready(
    operator: KopfRunner, crd_installed: KubeTarget, namespace: str
) -> None:
    kube = crd_installed
    for sample in ("region-a.yaml", "region-b.yaml"):
        kube.kubectl("apply", "-n", namespace, "-f", str(SAMPLES / sample))
    dep_a = wait_until(lambda: deployment(kube, namespace, "region-a"), what="deployment a")
    dep_b = wait_until(lambda: deployment(kube, namespace, "region-b"), what="deployment b")
    assert env_of(dep_a) == {
        **EXPECTED_A,
        "MEMORIA_LEADERSHIP__LEASE_NAMESPACE": namespace,
        "MEMORIA_LEADERSHIP__IDENTITY": f"{namespace}/region-a",
    }
    env_b = env_of(dep_b)
    assert env_b["MEMORIA_SYNC__CONNECTION_URL"] == "redis://redis-b:6379/0"
    assert (env_b["MEMORIA_SYNC__PRIVACY_FLOOR"], env_b["MEMORIA_SYNC__PRIVACY_CEILING"]) == (
        "0",
        "10",
    )
    pod = dep_a["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "memoria:test"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["runAsNonRoot"] is True
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert pod["serviceAccountName"] == "memoria-region-a"
    svc = wait_until(lambda: get(kube, "service", "memoria-region-a", namespace), what="svc")
    assert svc["spec"]["ports"][0]["port"] == 8080
    for obj in (dep_a, svc):
        owner = obj["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["name"], owner["controller"]) == (
            "MemoriaRegion",
            "region-a",
            True,
        )
    # not Ready until the Deployment reports available (no kubelet here: the test says so)
    reg = wait_until(lambda: get(kube, "mreg", "region-a", namespace), what="region")
    assert wait_until(
        lambda: condition(get(kube, "mreg", "region-a", namespace), "DeploymentAvailable"),
        what="condition",
    )
    assert condition(get(kube, "mreg", "region-a", namespace), "Ready")["status"] == "False"
    for name in ("region-a", "region-b"):
        mark_available(kube, namespace, f"memoria-{name}")
    wait_until(
        lambda: condition(get(kube, "mreg", "region-a", namespace), "Ready")["status"] == "True",
        what="Ready",
    )
    wait_until(
        lambda: condition(get(kube, "mreg", "region-b", namespace), "Ready")["status"] == "True",
        what="Ready b",
    )
    table = parse_table(kube.kubectl("get", "mreg", "-n", namespace).stdout)
    seen = {row["NAME"]: row["READY"] for row in table}
    assert seen == {"region-a": "True", "region-b": "True"}, (
        seen,
        {
            name: (get(kube, "mreg", name, namespace) or {}).get("status", {}).get("conditions")
            for name in ("region-a", "region-b")
        },
        {
            name: ((d or {}).get("metadata", {}).get("generation"), (d or {}).get("status"))
            for name in ("region-a", "region-b")
            for d in [deployment(kube, namespace, name)]
        },
    )
    reg = get(kube, "mreg", "region-a", namespace)
    assert reg["status"]["observedGeneration"] == reg["metadata"]["generation"]
    wait_until(
        lambda: (
            {"Created", "Ready"} <= {e["reason"] for e in events_for(kube, namespace, "region-a")}
        ),
        10,
        "the Created and Ready Events",
    )


def test_drift_is_reverted(operator: KopfRunner, crd_installed: KubeTarget, namespace: str) -> None:
    kube = crd_installed
    kube.kubectl("apply", "-n", namespace, "-f", str(SAMPLES / "region-a.yaml"))
    wait_until(lambda: deployment(kube, namespace, "region-a"), what="deployment")
    kube.kubectl(
        "set",
        "env",
        "deployment/memoria-region-a",
        "-n",
        namespace,
        "MEMORIA_SYNC__PRIVACY_FLOOR=-15",
    )
    kube.kubectl("scale", "deployment/memoria-region-a", "-n", namespace, "--replicas=5")
    kube.kubectl(
        "set", "image", "deployment/memoria-region-a", "-n", namespace, "memoria=evil:latest"
    )

    def restored() -> bool:
        dep = deployment(kube, namespace, "region-a")
        assert dep is not None
        container = dep["spec"]["template"]["spec"]["containers"][0]
        return (
            env_of(dep)["MEMORIA_SYNC__PRIVACY_FLOOR"] == "0"
            and dep["spec"]["replicas"] == 1
            and container["image"] == "memoria:test"
        )

    wait_until(restored, what="drift reverted")
    kube.kubectl("delete", "deployment", "memoria-region-a", "-n", namespace)
    wait_until(lambda: deployment(kube, namespace, "region-a"), what="deployment recreated")
    kube.kubectl("delete", "service", "memoria-region-a", "-n", namespace)
    wait_until(
        lambda: get(kube, "service", "memoria-region-a", namespace),
        timeout=15,
        what="service recreated by the resync",
    )


def test_reconcile_is_idempotent(
    operator: KopfRunner, crd_installed: KubeTarget, namespace: str
) -> None:
    kube = crd_installed
    kube.kubectl("apply", "-n", namespace, "-f", str(SAMPLES / "region-b.yaml"))
    wait_until(lambda: deployment(kube, namespace, "region-b"), what="deployment")
    mark_available(kube, namespace, "memoria-region-b")
    wait_until(
        lambda: condition(get(kube, "mreg", "region-b", namespace), "Ready")["status"] == "True",
        what="Ready",
    )
    # and the leadership loop's part of the status (its first step comes a moment after)
    wait_until(
        lambda: condition(get(kube, "mreg", "region-b", namespace), "LeadershipValid"),
        what="LeadershipValid",
    )

    def versions() -> dict[str, str]:
        out = {}
        for kind in ("deployment", "service", "serviceaccount", "role", "rolebinding", "mreg"):
            name = "region-b" if kind == "mreg" else "memoria-region-b"
            out[kind] = get(kube, kind, name, namespace)["metadata"]["resourceVersion"]
        return out

    before = versions()
    status_before = get(kube, "mreg", "region-b", namespace)["status"]
    import time

    time.sleep(7)  # two resync periods: each reconciles again
    after = versions()
    status_after = get(kube, "mreg", "region-b", namespace)["status"]
    assert {k: v for k, v in after.items() if k != "mreg"} == {
        k: v for k, v in before.items() if k != "mreg"
    }
    if after["mreg"] != before["mreg"]:  # only the heartbeat may have moved
        status_before.pop("observedTime", None)
        status_after.pop("observedTime", None)
        assert status_after == status_before


def test_spec_update_rolls_out(
    operator: KopfRunner, crd_installed: KubeTarget, namespace: str
) -> None:
    kube = crd_installed
    kube.kubectl("apply", "-n", namespace, "-f", str(SAMPLES / "region-a.yaml"))
    wait_until(lambda: deployment(kube, namespace, "region-a"), what="deployment")
    # two replicas need a shared store: the CRD refuses them on the embedded one
    kube.kubectl(
        "create", "secret", "generic", "region-a-store", "-n", namespace,
        "--from-literal=url=postgresql://memoria@pg.example:5432/memoria",
    )  # fmt: skip
    kube.kubectl(
        "patch",
        "mreg",
        "region-a",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec": {"privacy": {"floor": -5, "ceiling": 12}, '
        '"sync": {"channel": "memoria-sync-v2"}, "replicas": 2, '
        '"store": {"connectionSecretRef": {"name": "region-a-store"}}}}',
    )

    def followed() -> bool:
        env = env_of(deployment(kube, namespace, "region-a") or {})
        return (
            env["MEMORIA_SYNC__PRIVACY_FLOOR"],
            env["MEMORIA_SYNC__PRIVACY_CEILING"],
            env["MEMORIA_SYNC__CHANNEL"],
        ) == ("-5", "12", "memoria-sync-v2")

    wait_until(followed, what="env follows the spec")
    assert deployment(kube, namespace, "region-a")["spec"]["replicas"] == 2
    # the Event follows the update it reports
    wait_until(
        lambda: any(
            e["reason"] == "Updated" and "Deployment" in e["message"]
            for e in events_for(kube, namespace, "region-a")
        ),
        10,
        "the Updated Event naming the Deployment",
    )


def test_delete_region_garbage_collects(
    operator: KopfRunner, crd_installed: KubeTarget, namespace: str
) -> None:
    kube = crd_installed
    kube.kubectl("apply", "-n", namespace, "-f", str(SAMPLES / "region-b.yaml"))
    wait_until(lambda: deployment(kube, namespace, "region-b"), what="deployment")
    uid = get(kube, "mreg", "region-b", namespace)["metadata"]["uid"]
    for kind in ("deployment", "service", "serviceaccount", "role", "rolebinding"):
        owners = get(kube, kind, "memoria-region-b", namespace)["metadata"]["ownerReferences"]
        assert owners[0]["uid"] == uid
    kube.kubectl("delete", "mreg", "region-b", "-n", namespace)
    if kube.flavour == "local" and kube.plane and kube.plane.with_controller_manager:
        # real garbage collection by kube-controller-manager (it may need one discovery
        # resync to start watching the new CRD, hence the long bound)
        for kind in ("deployment", "service", "serviceaccount", "role", "rolebinding"):
            wait_until(
                lambda kind=kind: get(kube, kind, "memoria-region-b", namespace) is None,
                timeout=90,
                what=f"{kind} garbage-collected",
                interval=0.5,
            )


def test_missing_secret_then_recovery(
    operator: KopfRunner, crd_installed: KubeTarget, namespace: str
) -> None:
    kube = crd_installed
    body = region_manifest("secretive")
    body["spec"]["sync"] = {
        "backend": "postgres",
        "table": "infra.memoria_sync_events",
        "connectionSecretRef": {"name": "pg-sync", "key": "url"},
    }
    body["spec"]["apiKeySecretRef"] = {"name": "api", "key": "api-key"}
    kube.apply(body, namespace)
    cond = wait_until(
        lambda: condition(get(kube, "mreg", "secretive", namespace), "SecretsAvailable"),
        what="condition",
    )
    assert cond["status"] == "False" and cond["reason"] == "SecretMissing"
    assert "pg-sync" in cond["message"] and "spec.sync.connectionSecretRef" in cond["message"]
    ready = condition(get(kube, "mreg", "secretive", namespace), "Ready")
    assert ready["status"] == "False" and ready["reason"] == "SecretMissing"
    wait_until(
        lambda: any(
            e["reason"] == "SecretMissing" for e in events_for(kube, namespace, "secretive")
        ),
        what="event",
    )
    # a value that does not fit the backend: named, never quoted
    secret(kube, namespace, "pg-sync", url="redis://:hunter2@redis:6379/0")
    secret(kube, namespace, "api", **{"api-key": "k"})
    cond = wait_until(
        lambda: (
            (c := condition(get(kube, "mreg", "secretive", namespace), "SecretsAvailable"))
            and c["reason"] == "SecretValueInvalid"
            and c
        ),
        timeout=60,  # a resync or two; longer on a loaded machine (CI runs sessions side by side)
        what="invalid value",
    )
    assert "hunter2" not in str(get(kube, "mreg", "secretive", namespace))
    assert "hunter2" not in str(events_for(kube, namespace, "secretive"))
    secret(kube, namespace, "pg-sync", url="postgresql://memoria:hunter2@db:5432/memoria")
    wait_until(
        lambda: (
            condition(get(kube, "mreg", "secretive", namespace), "SecretsAvailable")["status"]
            == "True"
        ),
        timeout=60,
        what="recovery once the Secret is fixed",
    )
    env = env_of(deployment(kube, namespace, "secretive"))
    assert env["MEMORIA_SYNC__CONNECTION_URL"] == {
        "secretKeyRef": {"name": "pg-sync", "key": "url"}
    }
    assert env["MEMORIA_API_KEY"] == {"secretKeyRef": {"name": "api", "key": "api-key"}}
    dep_text = str(deployment(kube, namespace, "secretive"))
    assert "hunter2" not in dep_text


def test_inconsistent_spec_gets_a_condition(
    operator: KopfRunner, crd_installed: KubeTarget, namespace: str
) -> None:
    kube = crd_installed
    body = region_manifest("odd", scheduler={"timeZone": "Mars/Olympus_Mons"})
    kube.apply(body, namespace)
    cond = wait_until(
        lambda: condition(get(kube, "mreg", "odd", namespace), "ConfigValid"), what="condition"
    )
    assert cond["status"] == "False" and cond["reason"] == "InvalidTimeZone"
    assert "spec.scheduler.timeZone" in cond["message"]
    assert deployment(kube, namespace, "odd") is None  # nothing the pods could not run
    kube.kubectl(
        "patch",
        "mreg",
        "odd",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec": {"scheduler": {"timeZone": "Europe/Paris"}}}',
    )
    wait_until(
        lambda: condition(get(kube, "mreg", "odd", namespace), "ConfigValid")["status"] == "True",
        what="fixed",
    )
    wait_until(lambda: deployment(kube, namespace, "odd"), what="deployment once valid")


def test_operator_restart_completes_the_work(crd_installed: KubeTarget, namespace: str) -> None:
    kube = crd_installed
    with running_operator(kube):
        kube.kubectl("apply", "-n", namespace, "-f", str(SAMPLES / "region-a.yaml"))
        wait_until(lambda: deployment(kube, namespace, "region-a"), what="deployment")
    # while no operator runs: things break and the spec changes
    kube.kubectl("delete", "service", "memoria-region-a", "-n", namespace)
    kube.kubectl("scale", "deployment/memoria-region-a", "-n", namespace, "--replicas=3")
    kube.kubectl(
        "patch",
        "mreg",
        "region-a",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec": {"privacy": {"floor": 3}}}',
    )
    with running_operator(kube):
        wait_until(lambda: get(kube, "service", "memoria-region-a", namespace), what="svc")
        wait_until(
            lambda: (
                (d := deployment(kube, namespace, "region-a"))
                and d["spec"]["replicas"] == 1
                and env_of(d)["MEMORIA_SYNC__PRIVACY_FLOOR"] == "3"
            ),
            what="deployment converged",
        )
