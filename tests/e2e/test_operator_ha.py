"""Two operator replicas: exactly one acts; when it dies the other takes over."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from memoria_operator.testenv import ManagedProcess
from memoria_operator.testenv.kube import KubeTarget
from tests.e2e.operator_harness import TEST_ENV, eventually, get
from tests.e2e.test_crd import region

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _operator(kube: KubeTarget, namespace: str, tmp: Path, n: int) -> ManagedProcess:
    env = {
        **os.environ,
        **TEST_ENV,
        "KUBECONFIG": str(kube.kubeconfig),
        "MEMORIA_OPERATOR_ELECTION_NAMESPACE": namespace,
    }
    proc = ManagedProcess(
        f"operator-{n}",
        [sys.executable, "-m", "memoria_operator", "run", "-n", namespace],
        tmp / f"operator-{n}.log",
        env=env,
    )
    proc.start()
    return proc


def test_two_replicas_one_acts_then_the_other(
    crd_installed: KubeTarget, namespace: str, tmp_path: Path
) -> None:
    kube = crd_installed
    first = _operator(kube, namespace, tmp_path, 1)
    eventually(lambda: get(kube, "lease", "memoria-operator", namespace), what="election")
    second = _operator(kube, namespace, tmp_path, 2)
    try:
        eventually(lambda: "standing by" in second.log_path.read_text(), what="standby")
        holder = get(kube, "lease", "memoria-operator", namespace)["spec"]["holderIdentity"]
        assert f"_{first.pid}_" in holder
        kube.apply(region("one"), namespace)
        eventually(lambda: get(kube, "deployment", "memoria-one", namespace), what="deployment")
        assert "reconcile" not in second.log_path.read_text().lower()
        assert "Created Deployment" not in second.log_path.read_text()
        first.kill()
        killed = time.monotonic()
        eventually(
            lambda: (
                f"_{second.pid}_"
                in get(kube, "lease", "memoria-operator", namespace)["spec"]["holderIdentity"]
            ),
            timeout=15,
            what="the standby to take over",
        )
        kube.apply(region("two"), namespace)
        eventually(
            lambda: get(kube, "deployment", "memoria-two", namespace), what="the new leader to act"
        )
        assert time.monotonic() - killed < 15
    finally:
        first.stop()
        second.stop()
