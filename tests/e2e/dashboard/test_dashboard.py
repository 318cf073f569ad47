"""The Grafana dashboard against a real Prometheus (Debian's binary) scraping the operator and
two regions of the test bed through a switchover and a failover: every panel's query returns
data, and the leader series flips at the switchover.

With ``MEMORIA_DASHBOARD_DATA=/path.json`` the range data of every panel is also saved there,
for ``hack/render-dashboard.py`` (the PNG in docs/operations.md).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testbed.cluster import start_operator
from testbed.harness import BED_OPERATOR_ENV
from testbed.kube import KubeTarget
from testbed.paths import CHART
from testbed.processes import free_port, wait_until
from testbed.prometheus import PrometheusServer, PrometheusUnavailable, prometheus_binary
from testbed.regions import RegionBed, region_bed

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DASHBOARD = CHART / "files" / "dashboard.json"
RATE_WINDOW = "10s"  # what Grafana's $__rate_interval would be at a 1 s scrape interval


def panel_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel, Grafana's variables resolved."""
    doc = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"].replace("$__rate_interval", RATE_WINDOW))
        for panel in doc["panels"]
        for target in panel["targets"]
    ]


def _has_numbers(result: list[dict[str, Any]]) -> bool:
    return any(not math.isnan(float(v)) for series in result for _, v in series["values"])


def _value_at(result: list[dict[str, Any]], at: float) -> float | None:
    """The sample of the (one) series nearest to ``at``."""
    best: tuple[float, float] | None = None
    for series in result:
        for t, v in series["values"]:
            if best is None or abs(t - at) < abs(best[0] - at):
                best = (t, float(v))
    return None if best is None else best[1]


@pytest.fixture
def prometheus_available() -> None:
    try:
        prometheus_binary()
    except PrometheusUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(str(exc))
        pytest.skip(str(exc))


@pytest.fixture
def scraped_bed(
    crd_installed: KubeTarget, namespace: str, tmp_path: Path, prometheus_available: None
) -> Iterator[tuple[RegionBed, PrometheusServer]]:
    kube = crd_installed
    privacy = {"region-a": {"floor": -15, "ceiling": 15}, "region-b": {"floor": 0, "ceiling": 10}}
    metrics_port = free_port()
    with region_bed(kube, namespace, tmp_path, privacy=privacy) as bed:
        operator = start_operator(
            kube.kubeconfig,
            tmp_path / "operator.log",
            {
                **BED_OPERATOR_ENV,
                "MEMORIA_OPERATOR_ELECTION_NAMESPACE": namespace,
                "MEMORIA_OPERATOR_METRICS_PORT": str(metrics_port),
            },
            "-n",
            namespace,
        )
        prometheus = PrometheusServer(
            tmp_path / "prometheus",
            {
                "memoria-operator": [(f"127.0.0.1:{metrics_port}", {})],
                "memoria-regions": [
                    (f"127.0.0.1:{port}", {"region": name}) for name, port in bed.ports.items()
                ],
            },
        )
        try:
            bed.bring_up()
            prometheus.start()
            yield bed, prometheus
        finally:
            prometheus.stop()
            operator.stop()


def test_every_panel_has_data_and_the_leader_flips_at_the_switchover(
    scraped_bed: tuple[RegionBed, PrometheusServer],
) -> None:
    bed, prometheus = scraped_bed
    a, b = bed.processes["region-a"], bed.processes["region-b"]
    started = time.time()
    bed.wait_leader("region-a")
    wait_until(
        lambda: set(prometheus.target_health().values()) == {"up"}, 30, "every target scraped"
    )
    for i in range(5):  # traffic: replicated, kept home by privacy, read back
        mid = a.write(f"note {i}", y=3)
        a.write(f"private {i}", y=-12)  # region-a's own range, never sent: privacy_out
        a.write(f"above b {i}", y=12)  # sent, refused by region-b's ceiling: privacy_in
        a.request("GET", f"/memories/{mid}")
    wait_until(lambda: b.request("GET", f"/memories/{mid}")[0] == 200, 20, "replication")
    time.sleep(4)

    switchover = time.time()
    bed.kube.kubectl(
        "annotate",
        "mreg",
        "region-b",
        "-n",
        bed.namespace,
        "--overwrite",
        f"memoria.arcafutura.io/promote={int(switchover)}",
    )
    wait_until(lambda: bed.leading("region-b") is True, 20, "region-b to lead")
    switched = time.time()
    b.write("after the switchover", y=1)
    time.sleep(4)

    failover = time.time()
    b.kill()
    wait_until(lambda: bed.leading("region-a") is True, 30, "region-a to lead again")
    time.sleep(4)
    end = time.time()

    data: dict[str, Any] = {
        "start": started,
        "end": end,
        "switchover": switchover,
        "failover": failover,
        "queries": {},
    }
    empty = []
    for title, expr in panel_queries():
        result = prometheus.query_range(expr, started, end, 1)
        data["queries"].setdefault(title, []).append({"expr": expr, "result": result})
        if not _has_numbers(result):
            empty.append(f"{title}: {expr}")
    assert not empty, "panels without data:\n" + "\n".join(empty)

    # the leader series: region-a until the switchover, region-b from it until the failover
    def leader_of(region: str) -> list[dict[str, Any]]:
        return prometheus.query_range(
            f'memoria_operator_group_leader{{region="{region}"}}', started, end, 1
        )

    lead_a, lead_b = leader_of("region-a"), leader_of("region-b")
    before, between = switchover - 1.5, (switched + failover) / 2
    assert _value_at(lead_a, before) == 1 and _value_at(lead_b, before) == 0
    assert _value_at(lead_a, between) == 0 and _value_at(lead_b, between) == 1
    assert _value_at(lead_a, end - 1) == 1 and _value_at(lead_b, end - 1) == 0
    # and the failover shows up as a Failover transition
    reasons = {
        s["metric"]["reason"]
        for s in prometheus.query("memoria_operator_leadership_transitions_total", at=end)
    }
    assert {"Bootstrap", "Switchover", "Failover"} <= reasons

    target = os.environ.get("MEMORIA_DASHBOARD_DATA")
    saved = bed.workdir / "dashboard-data.json"
    saved.write_text(json.dumps(data))
    if target:
        shutil.copy(saved, target)
