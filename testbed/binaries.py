"""Find (and on first use build) the control-plane binaries: etcd, kube-apiserver, kubectl, helm;
and, for the node, kubelet, kube-scheduler and kube-proxy.

The build itself is ``hack/build-k8s-binaries.sh``; it caches by version under
``~/.cache/memoria-operator/bin`` and prints ``NAME=path`` lines, which this module reads. Its
progress goes to stderr untouched, so a first run shows what it is building.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .paths import BUILD_SCRIPT, REPO


class BinariesUnavailable(RuntimeError):
    """The control-plane binaries could not be built or found."""


@dataclass(frozen=True)
class Binaries:
    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kubectl: Path
    helm: Path


_FIELDS = {
    "ETCD": "etcd",
    "KUBE_APISERVER": "kube_apiserver",
    "KUBE_CONTROLLER_MANAGER": "kube_controller_manager",
    "KUBECTL": "kubectl",
    "HELM": "helm",
}


@dataclass(frozen=True)
class NodeBinaries:
    kubelet: Path
    kube_scheduler: Path
    kube_proxy: Path


_NODE_FIELDS = {
    "KUBELET": "kubelet",
    "KUBE_SCHEDULER": "kube_scheduler",
    "KUBE_PROXY": "kube_proxy",
}


def k8s_version() -> str:
    """The pinned Kubernetes version (``K8S_VERSION`` in hack/versions.env)."""
    for line in (REPO / "hack" / "versions.env").read_text().splitlines():
        if line.startswith("K8S_VERSION="):
            return line.split("=", 1)[1].strip()
    raise BinariesUnavailable("hack/versions.env has no K8S_VERSION")


def _run_build_script(targets: tuple[str, ...]) -> dict[str, Path]:
    script = Path(os.environ.get("MEMORIA_BUILD_SCRIPT", BUILD_SCRIPT))
    if not script.exists():
        raise BinariesUnavailable(
            f"{script} not found: run from a checkout of memoria-operator or set "
            "MEMORIA_BUILD_SCRIPT to the path of hack/build-k8s-binaries.sh"
        )
    proc = subprocess.run(
        ["bash", str(script), *targets],
        stdout=subprocess.PIPE,
        stderr=sys.stderr,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise BinariesUnavailable(f"{script} failed with exit code {proc.returncode}")
    found: dict[str, Path] = {}
    for line in proc.stdout.splitlines():
        key, _, value = line.partition("=")
        found[key] = Path(value)
    return found


def _pick(found: dict[str, Path], fields: dict[str, str]) -> dict[str, Path]:
    missing = sorted(key for key in fields if key not in found)
    if missing:
        raise BinariesUnavailable(f"the build script did not report paths for {missing}")
    return {attr: found[key] for key, attr in fields.items()}


def ensure_binaries(targets: tuple[str, ...] = ("etcd", "kubernetes", "helm")) -> Binaries:
    """Build what is missing from the cache and return the paths of all binaries."""
    return Binaries(**_pick(_run_build_script(targets), _FIELDS))


def ensure_node_binaries() -> NodeBinaries:
    """Build kubelet, kube-scheduler and kube-proxy if missing (about 1.5 minutes once the
    control plane's binaries are built: same module, same Go caches) and return their paths."""
    found = _pick(_run_build_script(("node",)), _NODE_FIELDS)
    absent = [str(p) for p in found.values() if not p.exists()]
    if absent:
        raise BinariesUnavailable(f"built, yet missing: {absent}")
    return NodeBinaries(**found)
