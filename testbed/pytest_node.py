"""The ``node_cluster`` fixture: a real one-node Kubernetes for e2e tests that need pods.

Import it into a conftest (``from testbed.pytest_node import node_cluster``). Session-scoped: one
node for the whole run. If ``python -m testbed up --node`` already brought a node up, the tests
use that one and leave it running; otherwise the fixture starts one and stops it at the end.

Where the machine cannot run a node (not root, packages missing) the tests skip and say why;
under CI (``CI`` set) that is a failure instead, so a broken install cannot pass unseen.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from .node import NodeCluster, RunningNode, missing_prerequisites, node_is_healthy, read_state
from .onnode import OperatorRelease, helm, install_operator


@pytest.fixture(scope="session")
def node_cluster() -> Iterator[RunningNode]:
    missing = missing_prerequisites()
    if missing:
        message = f"no node on this machine: missing {', '.join(missing)} (hack/bootstrap.sh)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    state = read_state()
    if state and state.get("detached") and node_is_healthy(state):
        yield RunningNode.from_state(state)
        return
    cluster = NodeCluster()
    cluster.start()
    try:
        yield cluster.running()
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def node_operator(node_cluster: RunningNode) -> Iterator[OperatorRelease]:
    """The operator as users get it: ``helm install`` of the chart with our local image, in a
    namespace of its own, watching every namespace (one per session: two would both act)."""
    kube = node_cluster.kube
    namespace = f"memoria-system-{uuid.uuid4().hex[:6]}"
    try:
        release = install_operator(kube, node_cluster.image, namespace)
    except BaseException:
        helm(kube, "uninstall", "memoria", "-n", namespace, "--wait", check=False)
        kube.delete_namespace(namespace)
        raise
    try:
        yield release
    finally:
        helm(kube, "uninstall", release.release, "-n", namespace, "--wait", check=False)
        kube.delete_namespace(namespace)
