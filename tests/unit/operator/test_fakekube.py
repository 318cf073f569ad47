"""The in-memory Kube the reconciler's unit tests use keeps the API server's rules they rely on."""

from __future__ import annotations

from typing import Any

import pytest

from memoria_operator.kube import Conflict, path_for
from testbed.fakekube import FakeKube

NS = "ns"
SVC = path_for("v1", "Service", NS, "svc")


def service(**labels: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "svc", "namespace": NS, "labels": labels},
        "spec": {"ports": [{"port": 80}]},
    }


def test_missing_is_none_and_delete_of_missing_is_quiet() -> None:
    kube = FakeKube()
    assert kube.get(SVC) is None
    kube.delete(SVC)


def test_create_twice_is_a_conflict_and_server_fields_are_filled() -> None:
    kube = FakeKube()
    created = kube.create(path_for("v1", "Service", NS), service())
    meta = created["metadata"]
    assert meta["uid"] and meta["resourceVersion"] and meta["generation"] == 1
    with pytest.raises(Conflict):
        kube.create(path_for("v1", "Service", NS), service())


def test_a_stale_resource_version_is_a_conflict() -> None:
    kube = FakeKube()
    old = kube.put(service())["metadata"]["resourceVersion"]
    kube.merge_patch(SVC, {"spec": {"ports": [{"port": 81}]}})
    with pytest.raises(Conflict):
        kube.merge_patch(SVC, {"metadata": {"resourceVersion": old}, "spec": {"type": "X"}})
    with pytest.raises(Conflict):
        kube.replace(SVC, {**service(), "metadata": {"name": "svc", "resourceVersion": old}})


def test_versions_move_only_on_change_and_generation_only_with_spec() -> None:
    kube = FakeKube()
    kube.put(service())
    same = kube.apply(service())
    assert (
        same["metadata"]["resourceVersion"]
        == kube.find("v1", "Service", NS, "svc")["metadata"]["resourceVersion"]
    )
    labelled = kube.apply(service(tier="x"))
    assert labelled["metadata"]["resourceVersion"] != same["metadata"]["resourceVersion"]
    assert labelled["metadata"]["generation"] == 1
    status = kube.merge_patch(SVC + "/status", {"status": {"ok": True}, "spec": {"type": "Y"}})
    assert status["status"] == {"ok": True} and "type" not in status["spec"]  # status only
    respec = kube.merge_patch(SVC, {"spec": {"type": "Y"}, "status": {"ok": False}})
    assert respec["metadata"]["generation"] == 2 and respec["status"] == {"ok": True}


def test_lists_filter_by_label_selector() -> None:
    kube = FakeKube()
    kube.put(service(app="memoria", tier="a"))
    collection = path_for("v1", "Service", NS)
    assert len(kube.list(collection, labelSelector="app=memoria")) == 1
    assert kube.list(collection, labelSelector="app=memoria,tier=b") == []
    assert kube.list(path_for("v1", "Service", "elsewhere")) == []
