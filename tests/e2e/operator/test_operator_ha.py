"""Two operator replicas: exactly one acts; when it dies the other takes over."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from testbed import ManagedProcess, free_port, wait_until
from testbed.cluster import get, mark_available, start_operator
from testbed.harness import OPERATOR_ENV
from testbed.kube import KubeTarget
from testbed.regions import region_manifest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _operator(
    kube: KubeTarget, namespace: str, tmp: Path, n: int, metrics_port: int = 0
) -> ManagedProcess:
    env = {
        **OPERATOR_ENV,
        "MEMORIA_OPERATOR_ELECTION_NAMESPACE": namespace,
        "MEMORIA_OPERATOR_METRICS_PORT": str(metrics_port),
    }
    return start_operator(
        kube.kubeconfig, tmp / f"operator-{n}.log", env, "-n", namespace, name=f"operator-{n}"
    )


def _scrape(port: int, *needles: str) -> str | None:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    return text if all(n in text for n in needles) else None


def test_two_replicas_one_acts_then_the_other(
    crd_installed: KubeTarget, namespace: str, tmp_path: Path
) -> None:
    kube = crd_installed
    metrics_port = free_port()
    first = _operator(kube, namespace, tmp_path, 1, metrics_port)
    wait_until(lambda: get(kube, "lease", "memoria-operator", namespace), what="election")
    second = _operator(kube, namespace, tmp_path, 2)
    try:
        wait_until(lambda: "standing by" in second.log_path.read_text(), what="standby")
        holder = get(kube, "lease", "memoria-operator", namespace)["spec"]["holderIdentity"]
        assert f"_{first.pid}_" in holder
        kube.apply(region_manifest("one", role="leader"), namespace)
        wait_until(lambda: get(kube, "deployment", "memoria-one", namespace), what="deployment")
        mark_available(kube, namespace, "memoria-one")
        metrics = wait_until(
            # the Lease goes to "one" once the leadership loop sees its Deployment available;
            # the reconcile that finds it Ready runs on the same event, but in its own time
            lambda: _scrape(
                metrics_port,
                'region="one"} 1.0',
                'memoria_operator_reconciles_total{result="ready"}',
            ),
            what="leader metric and a Ready reconcile",
        )
        bootstrap = (
            'memoria_operator_leadership_transitions_total{group="default",'
            f'namespace="{namespace}",reason="Bootstrap"}} 1.0'
        )
        assert bootstrap in metrics
        assert "memoria_operator_seconds_since_lease_renew" in metrics
        assert "# HELP memoria_operator_failover_duration_seconds" in metrics
        assert 'memoria_operator_reconciles_total{result="ready"}' in metrics
        assert "reconcile" not in second.log_path.read_text().lower()
        assert "Created Deployment" not in second.log_path.read_text()
        first.kill()
        killed = time.monotonic()
        wait_until(
            lambda: (
                f"_{second.pid}_"
                in get(kube, "lease", "memoria-operator", namespace)["spec"]["holderIdentity"]
            ),
            timeout=15,
            what="the standby to take over",
        )
        kube.apply(region_manifest("two"), namespace)
        wait_until(
            lambda: get(kube, "deployment", "memoria-two", namespace), what="the new leader to act"
        )
        assert time.monotonic() - killed < 15
    finally:
        first.stop()
        second.stop()
