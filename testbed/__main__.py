"""``python -m testbed up [--node] | down | status``: a local Kubernetes for humans.

Two modes:

* process-only (``up``): etcd, kube-apiserver and kube-controller-manager in the background, on
  loopback, no node: fast, needs nothing but the binaries. One at a time is tracked in
  ``~/.cache/memoria-operator/testenv/current``.
* node (``up --node``, as root): the same control plane plus a real node (containerd, CNI,
  kubelet, kube-proxy, kube-scheduler) running pods from this repository's image, built without a
  registry and loaded into the node (see testbed.node and testbed.images).

``up`` prints the path of an admin kubeconfig and returns (a second ``up`` prints the same one);
``down`` stops whatever is up and undoes every change to the machine.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import node as node_mode
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


def up_node(timeout: float) -> int:
    state = node_mode.read_state()
    if state and state.get("detached"):
        if node_mode.node_is_healthy(state):
            print(state["kubeconfig"])
            print("a node is already up; 'down' stops it", file=sys.stderr)
            return 0
        # a part of it died (or the machine rebooted): start again from nothing
        done = node_mode.teardown()
        print(f"the node that was up is broken; cleaned up: {', '.join(done)}", file=sys.stderr)
    cluster = node_mode.NodeCluster()
    try:
        cluster.start(timeout=timeout, detached=True)
    except (BinariesUnavailable, node_mode.NodeUnavailable, node_mode.NodeBusy) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(cluster.kubeconfig)
    facts = cluster.facts
    print(
        f"node {node_mode.NODE_NAME} ({node_mode.NODE_IP}) is Ready in {facts['up_seconds']}s; "
        f"image {cluster.image}; export KUBECONFIG={cluster.kubeconfig}",
        file=sys.stderr,
    )
    return 0


def _node_made_something() -> bool:
    return (
        node_mode.NODE_DIR.exists()
        or Path("/sys/class/net", node_mode.NODE_INTERFACE).exists()
        or any((m / node_mode.CGROUP_ROOT).exists() for m in node_mode.cgroup_mounts())
    )


def down() -> int:
    workdir = _current()
    if workdir is None:
        POINTER.unlink(missing_ok=True)
    else:
        stopped = stop_from_state(workdir)
        POINTER.unlink(missing_ok=True)
        print(
            f"stopped {', '.join(stopped) or 'nothing (already gone)'}; removed {workdir}",
            file=sys.stderr,
        )
    if _node_made_something():
        state = node_mode.read_state()
        if state is None:
            # a node's interfaces or chains exist, but its state is not under this HOME: it
            # belongs to another user's or session's run (a test session with another HOME
            # once tore down the node CI's node tests were using); never touch it from here
            print("a node is up that this HOME did not start: left alone", file=sys.stderr)
            return 0
        owner = state.get("owner")
        if not state.get("detached") and owner and Path(f"/proc/{owner}").exists():
            print(
                f"the node belongs to process {owner} (a test session): left alone", file=sys.stderr
            )
            return 1
        done = node_mode.teardown()
        print(f"node: {', '.join(done) or 'nothing left'}", file=sys.stderr)
    elif workdir is None:
        print("nothing is up", file=sys.stderr)
    return 0


def status() -> int:
    workdir = _current()
    state = node_mode.read_state()
    if workdir is None and state is None:
        print("down")
        return 1
    if workdir is not None:
        print((workdir / "state.json").read_text())
    if state is not None:
        healthy = node_mode.node_is_healthy(state)
        print(json.dumps({"node": state, "healthy": healthy}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testbed", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="start the control plane and print the kubeconfig path")
    p_up.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for readiness")
    p_up.add_argument(
        "--node",
        action="store_true",
        help="also a real node running pods from our image (root; see hack/bootstrap.sh)",
    )
    sub.add_parser("down", help="stop what is up (control plane, node) and remove its files")
    sub.add_parser("status", help="print what is up, exit 1 if nothing")
    args = parser.parse_args(argv)
    if args.command == "up":
        return up_node(args.timeout) if args.node else up(args.timeout)
    if args.command == "down":
        return down()
    return status()


if __name__ == "__main__":
    sys.exit(main())
