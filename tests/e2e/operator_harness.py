"""Running the operator in tests: kopf's KopfRunner in this process, against the test API."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from kopf.testing import KopfRunner

from testbed.cluster import (  # noqa: F401 - re-exported for the tests
    condition,
    env_of,
    events_for,
    eventually,
    get,
    mark_available,
    secret,
)
from testbed.kube import KubeTarget

# fast timings for tests (the decorators read RESYNC at import, so set before importing)
TEST_ENV = {
    "MEMORIA_OPERATOR_RESYNC_SECONDS": "3",
    "MEMORIA_OPERATOR_METRICS_PORT": "0",
    "MEMORIA_OPERATOR_LEASE_DURATION_SECONDS": "3",
    "MEMORIA_OPERATOR_RENEW_INTERVAL_SECONDS": "1",
    "MEMORIA_OPERATOR_RETRY_INTERVAL_SECONDS": "0.25",
    "MEMORIA_OPERATOR_HEALTH_PROBE_TIMEOUT_SECONDS": "0.5",
    # the regions are processes on loopback: allow probing them there
    "MEMORIA_OPERATOR_HEALTH_URL_ALLOW": "127.0.0.0/8",
    "MEMORIA_OPERATOR_DEFAULT_IMAGE": "memoria:test",
}


@contextmanager
def running_operator(kube: KubeTarget) -> Iterator[KopfRunner]:
    saved = {k: os.environ.get(k) for k in [*TEST_ENV, "KUBECONFIG"]}
    os.environ.update(TEST_ENV)
    os.environ["KUBECONFIG"] = str(kube.kubeconfig)
    runner = KopfRunner(
        ["run", "--all-namespaces", "--standalone", "-m", "memoria_operator.handlers"],
        timeout=60,
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
