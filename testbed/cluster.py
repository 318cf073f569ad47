"""Small helpers for driving a Kubernetes API in tests and the demo: reading objects and
``kubectl get`` tables, and playing the kubelet's part (Deployment status) where no kubelet
runs."""

from __future__ import annotations

import base64
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .kube import KubeTarget
from .processes import ManagedProcess

if TYPE_CHECKING:
    from .controlplane import LocalControlPlane


def start_operator(
    kubeconfig: Path, log: Path, env: dict[str, str], *args: str, name: str = "memoria-operator"
) -> ManagedProcess:
    """``memoria-operator run <args>`` as its own process, as it runs in a cluster; ``env``
    (MEMORIA_OPERATOR_* settings) is added to this process's environment."""
    proc = ManagedProcess(
        name,
        [sys.executable, "-m", "memoria_operator", "run", *args],
        log,
        env={**os.environ, **env, "KUBECONFIG": str(kubeconfig)},
    )
    proc.start()
    return proc


def install_crd(kube: KubeTarget, crd: Path, timeout: float = 60) -> None:
    """Apply the CRD and wait until the API server serves it."""
    kube.kubectl("apply", "-f", str(crd), timeout=timeout)
    kube.kubectl(
        "wait",
        "--for=condition=Established",
        f"--timeout={timeout:g}s",
        "crd/memoriaregions.memoria.arcafutura.io",
        timeout=timeout + 10,
    )


def get(kube: KubeTarget, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
    """The object as ``kubectl get -o json`` shows it, or None (:meth:`KubeTarget.read`)."""
    return kube.read(kind, name, namespace)


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
                "message": "written by memoria testenv (no kubelet here)",
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
    found = kube.api_get(
        f"/api/v1/namespaces/{namespace}/events", fieldSelector=f"involvedObject.name={name}"
    )
    items: list[dict[str, Any]] = found["items"]
    return items


def parse_table(out: str) -> list[dict[str, str]]:
    """Rows of ``kubectl get`` output keyed by column header (cells cut at header offsets)."""
    lines = out.splitlines()
    header = lines[0]
    names = header.split()
    starts = [header.index(n) for n in names]
    ends = [*starts[1:], None]
    return [
        {n: line[s:e].strip() for n, s, e in zip(names, starts, ends, strict=True)}
        for line in lines[1:]
    ]


@contextmanager
def operator_on_local_plane(
    env: dict[str, str], *args: str
) -> Iterator[tuple[LocalControlPlane, KubeTarget, ManagedProcess]]:
    """A local control plane with the CRD installed and the operator running as its own process
    (``memoria-operator run <args>``, settings ``env``); everything stopped on exit. What the
    benchmarks start before they measure."""
    from .binaries import ensure_binaries
    from .controlplane import LocalControlPlane
    from .paths import CRD

    binaries = ensure_binaries(("etcd", "kubernetes"))
    plane = LocalControlPlane(binaries)
    plane.start()
    kube = KubeTarget(plane.kubeconfig, binaries.kubectl, "local", plane)
    operator: ManagedProcess | None = None
    try:
        install_crd(kube, CRD)
        operator = start_operator(plane.kubeconfig, plane.workdir / "operator.log", env, *args)
        yield plane, kube, operator
    finally:
        if operator is not None:
            operator.stop()
        plane.stop()
