"""The node tests run on a real one-node Kubernetes (testbed.node), brought up once a session."""

from testbed.pytest_node import node_cluster

__all__ = ["node_cluster"]
