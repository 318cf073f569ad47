"""The operator as the tests and the demo run it: one set of fast timings, and kopf's
``KopfRunner`` for running it inside the test process.

The timings shrink the product's defaults (a 10 s Lease renewed every 2 s, a 30 s resync) so that
a failover or a reverted edit takes seconds. They keep the order the operator insists on
(lease duration > renew interval > retry interval). Everything that starts an operator for a test
or the demo takes them from here: the in-process runner below, ``start_operator`` callers, and the
Helm values of the chart tests (:func:`helm_timing_flags`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

from kopf.testing import KopfRunner

from .kube import KubeTarget

FAST_TIMINGS = {
    "MEMORIA_OPERATOR_LEASE_DURATION_SECONDS": "3",
    "MEMORIA_OPERATOR_RENEW_INTERVAL_SECONDS": "1",
    "MEMORIA_OPERATOR_RETRY_INTERVAL_SECONDS": "0.25",
    "MEMORIA_OPERATOR_HEALTH_PROBE_TIMEOUT_SECONDS": "0.5",
    "MEMORIA_OPERATOR_RESYNC_SECONDS": "3",
}

# what every operator of the test bed and the demo runs with: the timings, no metrics port
# (several operators share the machine), and leave to probe health URLs on loopback, where the
# bed's regions run as processes
BED_OPERATOR_ENV = {
    **FAST_TIMINGS,
    "MEMORIA_OPERATOR_METRICS_PORT": "0",
    "MEMORIA_OPERATOR_HEALTH_URL_ALLOW": "127.0.0.0/8",
}
# under test, also an image name that shows in rendered Deployments as the test's own
TEST_IMAGE = "memoria:test"
OPERATOR_ENV = {**BED_OPERATOR_ENV, "MEMORIA_OPERATOR_DEFAULT_IMAGE": TEST_IMAGE}

# the chart's values that set the same timings (charts/memoria/values.yaml)
_HELM_VALUES = {
    "operator.resyncSeconds": "MEMORIA_OPERATOR_RESYNC_SECONDS",
    "operator.lease.durationSeconds": "MEMORIA_OPERATOR_LEASE_DURATION_SECONDS",
    "operator.lease.renewIntervalSeconds": "MEMORIA_OPERATOR_RENEW_INTERVAL_SECONDS",
    "operator.lease.retryIntervalSeconds": "MEMORIA_OPERATOR_RETRY_INTERVAL_SECONDS",
}


def helm_timing_flags() -> list[str]:
    """``--set-json`` flags giving a Helm release of the chart the fast timings."""
    flags: list[str] = []
    for value, env in _HELM_VALUES.items():
        flags += ["--set-json", f"{value}={FAST_TIMINGS[env]}"]
    return flags


@contextmanager
def running_operator(kube: KubeTarget) -> Iterator[KopfRunner]:
    """The operator inside this process (``kopf run -m memoria_operator``, all namespaces) with
    :data:`OPERATOR_ENV`, against ``kube``; yields kopf's ``KopfRunner``. Fails the test if the
    operator raised."""
    saved = {k: os.environ.get(k) for k in [*OPERATOR_ENV, "KUBECONFIG"]}
    os.environ.update(OPERATOR_ENV)
    os.environ["KUBECONFIG"] = str(kube.kubeconfig)
    runner = KopfRunner(
        ["run", "--all-namespaces", "--standalone", "-m", "memoria_operator"], timeout=60
    )
    try:
        with runner:
            yield runner
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert runner.exception is None, runner.exception


# what ``region_bed(operator=...)`` takes: a way to run the operator for the bed's lifetime
OperatorRun = Callable[[], AbstractContextManager[KopfRunner]]
