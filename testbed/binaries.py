"""Find (and on first use build) the control-plane binaries: etcd, kube-apiserver, kubectl, helm.

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

from .paths import BUILD_SCRIPT


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


def ensure_binaries(targets: tuple[str, ...] = ("etcd", "kubernetes", "helm")) -> Binaries:
    """Build what is missing from the cache and return the paths of all binaries."""
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
        if key in _FIELDS:
            found[_FIELDS[key]] = Path(value)
    missing = sorted(set(_FIELDS.values()) - set(found))
    if missing:
        raise BinariesUnavailable(f"{script} did not report paths for {missing}")
    return Binaries(**found)
