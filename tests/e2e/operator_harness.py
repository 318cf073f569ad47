"""Running the operator in tests: kopf's KopfRunner in this process, against the test API."""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from kopf.testing import KopfRunner

from memoria_operator.testenv.kube import KubeTarget

# fast timings for tests (the decorators read RESYNC at import, so set before importing)
TEST_ENV = {
    "MEMORIA_OPERATOR_RESYNC_SECONDS": "3",
    "MEMORIA_OPERATOR_METRICS_PORT": "0",
    "MEMORIA_OPERATOR_LEASE_DURATION_SECONDS": "3",
    "MEMORIA_OPERATOR_RENEW_INTERVAL_SECONDS": "1",
    "MEMORIA_OPERATOR_RETRY_INTERVAL_SECONDS": "0.25",
    "MEMORIA_OPERATOR_HEALTH_PROBE_TIMEOUT_SECONDS": "0.5",
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


def eventually(
    check: Callable[[], Any], timeout: float = 20.0, what: str = "condition", interval: float = 0.1
) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except AssertionError as exc:
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def get(kube: KubeTarget, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
    proc = kube.kubectl("get", kind, name, "-n", namespace, "-o", "json", check=False)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def env_of(deployment: dict[str, Any]) -> dict[str, Any]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def condition(region: dict[str, Any] | None, type_: str) -> dict[str, Any] | None:
    for cond in ((region or {}).get("status") or {}).get("conditions") or []:
        if cond["type"] == type_:
            return dict(cond)
    return None


def mark_available(
    kube: KubeTarget, namespace: str, deployment: str, available: bool = True, replicas: int = 1
) -> None:
    """Write a Deployment's status as a kubelet + deployment controller would."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    status = {
        "observedGeneration": 1,
        "replicas": replicas,
        "readyReplicas": replicas if available else 0,
        "availableReplicas": replicas if available else 0,
        "updatedReplicas": replicas,
        "conditions": [
            {
                "type": "Available",
                "status": "True" if available else "False",
                "reason": "MinimumReplicasAvailable" if available else "MinimumReplicasUnavailable",
                "message": "test wrote this status",
                "lastUpdateTime": now,
                "lastTransitionTime": now,
            }
        ],
    }
    kube.kubectl(
        "patch",
        "deployment",
        deployment,
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": status}),
    )


def secret(kube: KubeTarget, namespace: str, name: str, **data: str) -> None:
    body = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }
    kube.apply(body, namespace)


def events_for(kube: KubeTarget, namespace: str, name: str) -> list[dict[str, Any]]:
    out = kube.kubectl(
        "get",
        "events",
        "-n",
        namespace,
        "-o",
        "json",
        f"--field-selector=involvedObject.name={name}",
    ).stdout
    items: list[dict[str, Any]] = json.loads(out)["items"]
    return items
