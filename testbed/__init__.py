"""Real servers for tests and the demo: a local Kubernetes control plane, Redis and PostgreSQL."""

from .binaries import Binaries, BinariesUnavailable, ensure_binaries
from .controlplane import LocalControlPlane, kubeconfig_document, stop_from_state
from .datastores import PostgresServer, RedisServer
from .processes import ManagedProcess, free_port, wait_until
from .serve import MemoriaProcess

__all__ = [
    "Binaries",
    "BinariesUnavailable",
    "LocalControlPlane",
    "ManagedProcess",
    "MemoriaProcess",
    "PostgresServer",
    "RedisServer",
    "ensure_binaries",
    "free_port",
    "kubeconfig_document",
    "stop_from_state",
    "wait_until",
]
