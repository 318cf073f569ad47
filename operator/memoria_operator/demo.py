"""The main job: a local multi-region walk-through on real parts.

Run by ``bash hack/demo.sh``. Today it brings up the local control plane, installs the
MemoriaRegion CRD and the two sample regions, and shows ``kubectl get mreg``; everything it
started is stopped on exit or Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .testenv import LocalControlPlane, ensure_binaries
from .testenv.kube import KubeTarget

REPO = Path(__file__).resolve().parents[2]


class Timeline:
    """Prints numbered steps with the seconds elapsed since the demo started."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    def step(self, text: str) -> None:
        print(f"[{time.monotonic() - self.start:6.1f}s] {text}", flush=True)

    def show(self, text: str) -> None:
        for line in text.rstrip().splitlines():
            print(f"          | {line}", flush=True)


def run(keep: bool) -> int:
    timeline = Timeline()
    timeline.step("building or reusing etcd, kube-apiserver, kubectl (cached in ~/.cache)")
    binaries = ensure_binaries(("etcd", "kubernetes"))
    timeline.step("starting the local control plane (etcd + kube-apiserver, RBAC on)")
    plane = LocalControlPlane(binaries)
    try:
        plane.start()
        kube = KubeTarget(plane.kubeconfig, binaries.kubectl, "local", plane)
        timeline.step(f"kube-apiserver ready at {plane.server}")
        kube.kubectl("apply", "-f", str(REPO / "crds" / "memoriaregion.yaml"))
        kube.kubectl(
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/memoriaregions.memoria.arcafutura.io",
        )
        timeline.step("CRD memoriaregions.memoria.arcafutura.io established")
        for sample in ("region-a.yaml", "region-b.yaml"):
            kube.kubectl("apply", "-n", "default", "-f", str(REPO / "crds" / "samples" / sample))
        timeline.step("applied crds/samples/region-a.yaml and region-b.yaml")
        timeline.step("kubectl get mreg -o wide")
        timeline.show(kube.kubectl("get", "mreg", "-n", "default", "-o", "wide").stdout)
        if keep:
            timeline.step(f"keeping it up; export KUBECONFIG={plane.kubeconfig}; Ctrl-C stops")
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        timeline.step("interrupted")
    finally:
        plane.stop()
        timeline.step("stopped every process and removed the temporary files")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m memoria_operator.demo", description=__doc__)
    parser.add_argument("--keep", action="store_true", help="keep running until Ctrl-C")
    args = parser.parse_args(argv)
    return run(args.keep)


if __name__ == "__main__":
    sys.exit(main())
