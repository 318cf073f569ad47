"""The node tests run on a real one-node Kubernetes (testbed.node), brought up once a session,
with the operator installed by Helm once (``node_operator``) for the tests that need it."""

from testbed.pytest_node import node_cluster, node_operator

__all__ = ["node_cluster", "node_operator"]
