"""Ready waits for the leadership loop's first probe; one group's failing step does not keep
another group's regions from being probed; the Events around the first probe name the real
reason. The loop and the reconciler run against the in-memory Kube stand-in."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

import pytest

from memoria.contract import API_VERSION, KIND
from memoria_operator import conditions as c
from memoria_operator.config import OperatorConfig
from memoria_operator.health import Health
from memoria_operator.leadership.decide import Decision, DecisionKind, GroupView
from memoria_operator.leadership.manager import LeadershipManager
from memoria_operator.leadership.status import lease_status
from memoria_operator.metrics import OperatorMetrics
from memoria_operator.model import Region
from memoria_operator.reconcile import Reconciler
from testbed.fakekube import FakeKube
from testbed.regions import region_manifest

NS = "memoria"


def deployed(kube: FakeKube, reconciler: Reconciler, name: str, group: str = "default") -> None:
    """A region reconciled, its Deployment then reported available and reconciled again."""
    manifest = region_manifest(name, group=group)
    manifest["metadata"]["namespace"] = NS
    reconciler.reconcile(kube.put(manifest))
    kube.mark_available(NS, f"memoria-{name}")
    reconciler.reconcile(kube.find(API_VERSION, KIND, NS, name))


def ready(kube: FakeKube, name: str) -> dict[str, Any]:
    found = c.find(kube.find(API_VERSION, KIND, NS, name)["status"]["conditions"], c.READY)
    assert found is not None
    return found


def events(kube: FakeKube, name: str) -> list[tuple[str, str]]:
    return [(e["type"], e["reason"]) for e in kube.events(NS, name)]


def test_a_failing_group_does_not_keep_the_others_unprobed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kube = FakeKube()
    reconciler = Reconciler(kube, "img")
    manager = LeadershipManager(kube, OperatorConfig(metrics_port=0), OperatorMetrics())
    for name, group in (("a", "g1"), ("b", "g2")):
        deployed(kube, reconciler, name, group)
        assert ready(kube, name)["reason"] == c.NOT_PROBED
        manager.observe_region(kube.find(API_VERSION, KIND, NS, name), deleted=False)
        manager.observe_deployment(
            kube.find("apps/v1", "Deployment", NS, f"memoria-{name}"), deleted=False
        )
    real_get = kube.get

    def get(path: str, *args: Any, **kwargs: Any) -> Any:
        if path.endswith("/leases/memoria-scheduler-g1"):
            raise RuntimeError("403 forbidden")  # g1's Lease can never be read
        return real_get(path, *args, **kwargs)

    monkeypatch.setattr(kube, "get", get)
    asyncio.run(manager.tick())
    assert ready(kube, "b")["status"] == "True"
    assert ready(kube, "a")["reason"] == c.NOT_PROBED  # its group's step failed: still honest


def test_the_first_probe_failing_is_the_event_not_the_wait_for_it() -> None:
    kube = FakeKube()
    deployed(kube, Reconciler(kube, "img"), "region-a")
    assert ("Warning", c.NOT_PROBED) not in events(kube, "region-a")  # a normal step
    manager = LeadershipManager(kube, OperatorConfig(metrics_port=0), OperatorMetrics())
    body = kube.find(API_VERSION, KIND, NS, "region-a")
    manager.regions[f"{NS}/region-a"] = body
    region = Region.from_body(body)
    now = time.monotonic()
    view = GroupView(
        namespace=NS,
        group="default",
        lease=None,
        regions={region.key: region},
        health={region.key: Health(False, "pod did not answer", now, c.now())},
        now=dt.datetime.now(dt.UTC),
        mono=now,
        renew_interval=2.0,
    )
    manager.publish_region(
        view, Decision(kind=DecisionKind.KEEP), region, lease_status("default", None)
    )
    assert (ready(kube, "region-a")["status"], ready(kube, "region-a")["reason"]) == (
        "False",
        c.UNHEALTHY,
    )
    assert ("Warning", c.UNHEALTHY) in events(kube, "region-a")
