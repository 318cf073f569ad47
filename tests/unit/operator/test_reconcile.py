"""The reconciler against an in-memory ``Kube`` (testbed.fakekube): what one MemoriaRegion turns
into, the conditions it gets, and that doing it again changes nothing. The e2e tests run the
same reconciler through kopf on a real API server."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from memoria.contract import API_VERSION, KIND
from memoria_operator import conditions as c
from memoria_operator.kube import region_path
from memoria_operator.model import Region
from memoria_operator.reconcile import Reconciler
from memoria_operator.render import render_all, selector
from testbed.fakekube import FakeKube
from testbed.regions import region_manifest

NS = "memoria"
IMAGE = "memoria:unit"


@pytest.fixture
def kube() -> FakeKube:
    return FakeKube()


@pytest.fixture
def reconciler(kube: FakeKube) -> Reconciler:
    return Reconciler(kube, IMAGE)


def add_region(kube: FakeKube, name: str = "region-a", **spec: Any) -> dict[str, Any]:
    manifest = region_manifest(name, **spec)
    manifest["metadata"]["namespace"] = NS
    return kube.put(manifest)


def region(kube: FakeKube, name: str = "region-a") -> dict[str, Any]:
    return kube.find(API_VERSION, KIND, NS, name)


def cond(kube: FakeKube, type_: str, name: str = "region-a") -> dict[str, Any]:
    found = c.find(region(kube, name).get("status", {}).get("conditions") or [], type_)
    assert found is not None, f"no {type_} condition"
    return found


def deployment(kube: FakeKube, name: str = "region-a") -> dict[str, Any]:
    return kube.find("apps/v1", "Deployment", NS, f"memoria-{name}")


def env(kube: FakeKube, name: str = "region-a") -> dict[str, Any]:
    container = deployment(kube, name)["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def reasons(kube: FakeKube, name: str = "region-a") -> list[str]:
    return [e["reason"] for e in kube.events(NS, name)]


def add_secret(kube: FakeKube, name: str, **data: str) -> None:
    encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    kube.put(
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": NS}}
        | {"data": encoded}
    )


def versions(kube: FakeKube) -> dict[str, str]:
    return {path: obj["metadata"]["resourceVersion"] for path, obj in kube.objects.items()}


def test_a_region_becomes_its_owned_objects(kube: FakeKube, reconciler: Reconciler) -> None:
    body = add_region(kube, privacy={"floor": 0, "ceiling": 10})
    result = reconciler.reconcile(body)
    owned = [
        (o["apiVersion"], o["kind"], o["metadata"]["name"])
        for o in render_all(Region.from_body(body), IMAGE)
    ]
    assert ("apps/v1", "Deployment", "memoria-region-a") in owned
    for api_version, kind, name in owned:
        obj = kube.find(api_version, kind, NS, name)
        owner = obj["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
            "MemoriaRegion",
            "region-a",
            body["metadata"]["uid"],
            True,
        )
    assert result.changed == [f"Created {kind} {name}" for _, kind, name in owned]
    assert reasons(kube).count("Created") == len(owned)
    pod = deployment(kube)["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == IMAGE
    assert pod["serviceAccountName"] == "memoria-region-a"
    rendered = env(kube)
    assert rendered["MEMORIA_REGION"] == "region-a"
    assert rendered["MEMORIA_SYNC__PRIVACY_FLOOR"] == "0"
    assert rendered["MEMORIA_SYNC__PRIVACY_CEILING"] == "10"
    assert rendered["MEMORIA_LEADERSHIP__IDENTITY"] == f"{NS}/region-a"


def test_not_ready_until_the_deployment_is_available(
    kube: FakeKube, reconciler: Reconciler
) -> None:
    result = reconciler.reconcile(add_region(kube))
    assert not result.ready
    status = region(kube)["status"]
    assert status["observedGeneration"] == 1
    assert (status["deployment"], status["service"]) == ("memoria-region-a",) * 2
    assert cond(kube, c.CONFIG_VALID)["status"] == "True"
    assert cond(kube, c.SECRETS_AVAILABLE)["status"] == "True"
    assert cond(kube, c.DEPLOYMENT_AVAILABLE)["reason"] == c.PROGRESSING
    ready = cond(kube, c.READY)
    assert (ready["status"], ready["reason"]) == ("False", c.PROGRESSING)
    assert "Ready" not in reasons(kube)  # a rollout under way is worth no Event

    kube.mark_available(NS, "memoria-region-a")
    result = reconciler.reconcile(region(kube))
    assert result.ready and result.deployment_available
    # available, but nobody has asked the region yet: the leadership loop's probe decides
    ready = cond(kube, c.READY)
    assert (ready["status"], ready["reason"]) == ("False", c.NOT_PROBED)
    stale = region(kube)  # what kopf hands over next, from before the loop's write below
    conditions = [
        *stale["status"]["conditions"],
        c.condition(c.HEALTHY, True, c.PROBES_ANSWER, "ok", 1),
    ]
    kube.merge_patch(
        region_path(NS, "region-a") + "/status",
        {"status": {"conditions": conditions}},
    )
    result = reconciler.reconcile(stale)
    ready = cond(kube, c.READY)
    assert (ready["status"], ready["reason"], ready["observedGeneration"]) == (
        "True",
        c.AVAILABLE,
        1,
    )
    assert result.conditions[0] == ready
    assert reasons(kube).count("Ready") == 1


def test_pods_that_cannot_start_are_named_in_the_condition(
    kube: FakeKube, reconciler: Reconciler
) -> None:
    body = add_region(kube, image="registry.example/memoria:missing")
    reconciler.reconcile(body)
    labels = selector(Region.from_body(body))
    kube.put(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "memoria-region-a-7d4b9", "namespace": NS, "labels": labels},
            "status": {
                "containerStatuses": [
                    {
                        "name": "memoria",
                        "restartCount": 0,
                        "state": {
                            "waiting": {"reason": "ImagePullBackOff", "message": "not found"}
                        },
                    }
                ]
            },
        }
    )
    reconciler.reconcile(region(kube))
    available = cond(kube, c.DEPLOYMENT_AVAILABLE)
    assert (available["status"], available["reason"]) == ("False", "ImagePullBackOff")
    assert "pod memoria-region-a-7d4b9: container memoria" in available["message"]
    assert cond(kube, c.READY)["reason"] == "ImagePullBackOff"


def test_a_second_reconcile_changes_nothing(kube: FakeKube, reconciler: Reconciler) -> None:
    reconciler.reconcile(add_region(kube))
    kube.mark_available(NS, "memoria-region-a")
    reconciler.reconcile(region(kube))
    before, events = versions(kube), reasons(kube)

    result = reconciler.reconcile(region(kube))
    assert result.ready
    assert result.changed == []
    assert versions(kube) == before  # no object written, the region's status included
    assert reasons(kube) == events  # and nothing to tell


def test_drift_is_reverted(kube: FakeKube, reconciler: Reconciler) -> None:
    reconciler.reconcile(add_region(kube))
    path = "/apis/apps/v1/namespaces/memoria/deployments/memoria-region-a"
    kube.merge_patch(path, {"spec": {"replicas": 5}})  # kubectl scale, say
    result = reconciler.reconcile(region(kube))
    assert deployment(kube)["spec"]["replicas"] == 1
    assert result.changed == ["Updated Deployment memoria-region-a"]
    assert "Updated" in reasons(kube)


def test_a_spec_change_rolls_out_and_is_observed(kube: FakeKube, reconciler: Reconciler) -> None:
    reconciler.reconcile(add_region(kube))
    kube.merge_patch(region_path(NS, "region-a"), {"spec": {"privacy": {"floor": -5}}})
    updated = region(kube)
    assert updated["metadata"]["generation"] == 2
    result = reconciler.reconcile(updated)
    assert env(kube)["MEMORIA_SYNC__PRIVACY_FLOOR"] == "-5"
    assert result.changed == ["Updated Deployment memoria-region-a"]
    assert region(kube)["status"]["observedGeneration"] == 2
    assert cond(kube, c.READY)["observedGeneration"] == 2


def test_a_config_problem_is_a_condition_and_deploys_nothing(
    kube: FakeKube, reconciler: Reconciler
) -> None:
    result = reconciler.reconcile(add_region(kube, scheduler={"timeZone": "Mars/Olympus_Mons"}))
    assert not result.ready
    config = cond(kube, c.CONFIG_VALID)
    assert (config["status"], config["reason"]) == ("False", "InvalidTimeZone")
    assert "spec.scheduler.timeZone" in config["message"]
    ready = cond(kube, c.READY)
    assert (ready["status"], ready["reason"]) == ("False", "InvalidTimeZone")
    assert "InvalidTimeZone" in reasons(kube)
    assert not any("/deployments/" in path for path in kube.objects)
    assert result.changed == []


def test_a_config_problem_leaves_what_runs_alone(kube: FakeKube, reconciler: Reconciler) -> None:
    reconciler.reconcile(add_region(kube))
    kube.mark_available(NS, "memoria-region-a")
    before = deployment(kube)
    kube.merge_patch(
        region_path(NS, "region-a"), {"spec": {"role": "leader", "scheduler": {"enabled": False}}}
    )
    result = reconciler.reconcile(region(kube))
    assert cond(kube, c.CONFIG_VALID)["reason"] == "LeaderWithoutScheduler"
    assert deployment(kube) == before  # neither rewritten nor removed
    assert result.deployment_available  # and still reported as it is


def test_a_missing_secret_then_a_wrong_value_then_recovery(
    kube: FakeKube, reconciler: Reconciler
) -> None:
    body = add_region(
        kube,
        backend="postgres",
        sync={
            "backend": "postgres",
            "table": "infra.memoria_sync_events",
            "connectionSecretRef": {"name": "pg-sync", "key": "url"},
        },
    )
    reconciler.reconcile(body)
    secrets = cond(kube, c.SECRETS_AVAILABLE)
    assert (secrets["status"], secrets["reason"]) == ("False", c.SECRET_MISSING)
    assert "pg-sync" in secrets["message"]
    assert "spec.sync.connectionSecretRef" in secrets["message"]
    ready = cond(kube, c.READY)
    assert (ready["status"], ready["reason"]) == ("False", c.SECRET_MISSING)
    assert c.SECRET_MISSING in reasons(kube)
    assert not any("/deployments/" in path for path in kube.objects)  # no rollout without it

    add_secret(kube, "pg-sync", url="redis://:hunter2@redis:6379/0")  # not for this backend
    reconciler.reconcile(region(kube))
    secrets = cond(kube, c.SECRETS_AVAILABLE)
    assert (secrets["status"], secrets["reason"]) == ("False", c.SECRET_INVALID)
    assert "hunter2" not in str(region(kube))
    assert "hunter2" not in str(kube.events(NS, "region-a"))

    kube.merge_patch(
        f"/api/v1/namespaces/{NS}/secrets/pg-sync",
        {"data": {"url": base64.b64encode(b"postgresql://db/memoria").decode()}},
    )
    reconciler.reconcile(region(kube))
    secrets = cond(kube, c.SECRETS_AVAILABLE)
    assert (secrets["status"], secrets["reason"]) == ("True", c.SECRETS_FOUND)
    # the pods read it by reference, never by value
    assert env(kube)["MEMORIA_SYNC__CONNECTION_URL"] == {
        "secretKeyRef": {"name": "pg-sync", "key": "url"}
    }
    assert "postgresql://db/memoria" not in str(deployment(kube))


def test_an_object_of_someone_else_is_never_taken_over(
    kube: FakeKube, reconciler: Reconciler
) -> None:
    theirs = kube.put(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "memoria-region-a", "namespace": NS, "labels": {"team": "x"}},
            "spec": {"ports": [{"port": 5432}]},
        }
    )
    result = reconciler.reconcile(add_region(kube))
    owned = cond(kube, c.RESOURCES_OWNED)
    assert (owned["status"], owned["reason"]) == ("False", c.CONFLICT)
    assert "Service memoria-region-a" in owned["message"]
    assert cond(kube, c.READY)["reason"] == c.CONFLICT
    assert kube.find("v1", "Service", NS, "memoria-region-a") == theirs  # untouched
    assert result.changed == []
    assert not any("/deployments/" in path for path in kube.objects)


def test_a_secret_without_the_key_names_the_keys_it_has(
    kube: FakeKube, reconciler: Reconciler
) -> None:
    add_secret(kube, "api", token="k")
    reconciler.reconcile(add_region(kube, apiKeySecretRef={"name": "api", "key": "api-key"}))
    secrets = cond(kube, c.SECRETS_AVAILABLE)
    assert (secrets["status"], secrets["reason"]) == ("False", c.SECRET_KEY_MISSING)
    assert "'api-key'" in secrets["message"] and "keys: token" in secrets["message"]


def test_the_status_write_survives_a_concurrent_writer(
    kube: FakeKube, reconciler: Reconciler
) -> None:
    body = add_region(kube)
    kube.conflict_next(region_path(NS, "region-a"), times=2)
    reconciler.reconcile(body)
    assert cond(kube, c.READY)["status"] == "False"  # written on the third attempt
    status_writes = [p for m, p in kube.writes() if p.endswith("/region-a/status")]
    assert len(status_writes) == 3
