"""``python -m testbed up|down|status``: a local control plane for humans.

``up`` starts etcd, kube-apiserver and kube-controller-manager in the background, prints the path
of an admin kubeconfig and returns; ``down`` stops them and removes their directory. One control
plane at a time is tracked in ``~/.cache/memoria-operator/testenv/current``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .binaries import BinariesUnavailable
from .controlplane import LocalControlPlane, stop_from_state

POINTER = Path.home() / ".cache" / "memoria-operator" / "testenv" / "current"


def _current() -> Path | None:
    if not POINTER.exists():
        return None
    workdir = Path(POINTER.read_text().strip())
    return workdir if (workdir / "state.json").exists() else None


def up(timeout: float) -> int:
    existing = _current()
    if existing is not None:
        state = json.loads((existing / "state.json").read_text())
        print(state["kubeconfig"])
        print("a local control plane is already up; 'down' stops it", file=sys.stderr)
        return 0
    try:
        plane = LocalControlPlane()
    except BinariesUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    plane.start(timeout=timeout, detached=True)
    POINTER.parent.mkdir(parents=True, exist_ok=True)
    POINTER.write_text(str(plane.workdir))
    print(plane.kubeconfig)
    print(
        f"kube-apiserver {plane.server} is ready; export KUBECONFIG={plane.kubeconfig}",
        file=sys.stderr,
    )
    return 0


def down() -> int:
    workdir = _current()
    if workdir is None:
        print("no local control plane is up", file=sys.stderr)
        POINTER.unlink(missing_ok=True)
        return 0
    stopped = stop_from_state(workdir)
    POINTER.unlink(missing_ok=True)
    print(
        f"stopped {', '.join(stopped) or 'nothing (already gone)'}; removed {workdir}",
        file=sys.stderr,
    )
    return 0


def status() -> int:
    workdir = _current()
    if workdir is None:
        print("down")
        return 1
    print((workdir / "state.json").read_text())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testbed", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="start the control plane and print the kubeconfig path")
    p_up.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for /readyz")
    sub.add_parser("down", help="stop the control plane and remove its files")
    sub.add_parser("status", help="print the running control plane's state, exit 1 if none")
    args = parser.parse_args(argv)
    if args.command == "up":
        return up(args.timeout)
    if args.command == "down":
        return down()
    return status()


if __name__ == "__main__":
    sys.exit(main())
