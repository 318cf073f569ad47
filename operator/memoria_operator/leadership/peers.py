"""Reaching the clusters of a group led across clusters: a client per peer cluster from its
mounted kubeconfig, clients that never resend, the short reason a call failed, and whether this
operator can take part in a group as its regions describe it."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from ..kube import Conflict, Kube
from ..model import Region


class Peers:
    """API clients for the peer clusters, loaded from their mounted kubeconfigs (again whenever
    the file changes: a rotated Secret is picked up without a restart)."""

    def __init__(self, directory: str, timeout: float) -> None:
        self.directory = Path(directory)
        self.timeout = timeout
        self._clients: dict[str, tuple[float, Kube]] = {}

    def client(self, cluster: str) -> Kube | str:
        """The peer's client, or why there is none."""
        path = self.directory / cluster / "kubeconfig"
        try:
            mtime = path.stat().st_mtime
        except OSError:
            return f"no credentials for cluster {cluster} (expected {path})"
        cached = self._clients.get(cluster)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        from memoria.contract import load_api_client

        try:
            api = single_try(load_api_client(str(path)))
            kube = Kube(api, timeout=self.timeout, liveness=False)
        except Exception as exc:  # a bad kubeconfig: say which, not its contents
            return (
                f"credentials for cluster {cluster} in {path} cannot be used ({type(exc).__name__})"
            )
        self._clients[cluster] = (mtime, kube)
        return kube


def single_try(api: Any) -> Any:
    """``api`` with urllib3's resending of failed requests turned off. A vote is written with
    a compare-and-set: a PUT resent after a lost answer comes back 409 although the first one
    landed, and a resent GET to a cut-off peer multiplies the time the round waits."""
    pool = api.rest_client.pool_manager
    pool.request = partial(pool.request, retries=False)
    return api


def own_api(shared: Any) -> Any:
    """A client of its own for this cluster's API, with the shared one's configuration."""
    from kubernetes import client

    return client.ApiClient(configuration=shared.configuration)


def quorum_problem(members: dict[str, Region], cluster_name: str) -> str | None:
    """Why this operator cannot take part in the group as its regions describe it, if it cannot."""
    specs = {
        (r.spec.quorum.cluster, tuple(r.spec.quorum.clusters)) if r.spec.quorum else None
        for r in members.values()
    }
    if None in specs:
        return "some regions of the group set spec.quorum and others do not; set it on all"
    if len(specs) > 1:
        return "the group's regions disagree on spec.quorum (cluster and clusters must match)"
    if not cluster_name:
        return (
            "spec.quorum is set but this operator has no cluster name "
            "(chart value federation.cluster, env MEMORIA_OPERATOR_CLUSTER_NAME)"
        )
    env = sorted(r.name for r in members.values() if r.env_control)
    if env:
        return (
            f"spec.scheduler.control: env is not supported with spec.quorum ({', '.join(env)}): "
            "leadership across clusters reaches the pods through the Lease they watch; use "
            "control: lease"
        )
    quorum = next(iter(members.values())).spec.quorum
    assert quorum is not None
    if quorum.cluster != cluster_name:
        return (
            f"spec.quorum.cluster is {quorum.cluster!r} but this operator runs in cluster "
            f"{cluster_name!r}"
        )
    return None


def why_failed(exc: Exception) -> str:
    """A short reason for a failed call to an API server (never a credential)."""
    status = getattr(exc, "status", None)
    if isinstance(exc, Conflict):
        return "changed since it was read (conflict)"
    if status:
        return f"HTTP {status} {getattr(exc, 'reason', '')}".strip()
    return type(exc).__name__
