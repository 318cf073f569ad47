"""Names and rules that the runtime, the operator, the chart and users share.

One place for each: the CRD's group, version and kind, the annotations users and regions write,
the scheduler Lease's name, the URL schemes each backend accepts, and how either side finds its
Kubernetes credentials. Importing this module imports nothing beyond the standard library (the
kubeconfig loader imports the ``kubernetes`` client only when called), so the operator can use it
without loading the region runtime's web and database stacks.
"""

from __future__ import annotations

import os
from typing import Any

# -- the MemoriaRegion custom resource ------------------------------------------------------------
GROUP = "memoria.arcafutura.io"
VERSION = "v1alpha1"
KIND = "MemoriaRegion"
PLURAL = "memoriaregions"
API_VERSION = f"{GROUP}/{VERSION}"
DEFAULT_GROUP = "default"

# -- annotations ----------------------------------------------------------------------------------
PROMOTE_ANNOTATION = f"{GROUP}/promote"  # a switchover request: any new value
FENCED_ANNOTATION = f"{GROUP}/fenced"  # "true": keep this region from leading
HANDOVER_ANNOTATION = f"{GROUP}/handover-to"  # on the Lease: a switchover in progress
HANDOVER_FROM_ANNOTATION = f"{GROUP}/handover-from"  # on the Lease: who the switchover leaves
HANDOVER_STARTED_ANNOTATION = f"{GROUP}/handover-started"  # on the Lease: when it began
REASON_ANNOTATION = f"{GROUP}/transition-reason"  # on the Lease: why its holder last changed
HOLDER_UID_ANNOTATION = f"{GROUP}/holder-uid"  # on the Lease: which incarnation of the holder

# -- the scheduler Lease --------------------------------------------------------------------------
LEASE_PREFIX = "memoria-scheduler-"


def lease_name(group: str) -> str:
    """The ``coordination.k8s.io/v1`` Lease that names the leading region of ``group``."""
    return f"{LEASE_PREFIX}{group}"


def holder_identity(namespace: str, name: str) -> str:
    """How a Lease names its holder: the MemoriaRegion's ``<namespace>/<name>``."""
    return f"{namespace}/{name}"


# -- promotion requests from a region's own pods -------------------------------------------------
# A region's pods may not write their MemoriaRegion (that would let a pod identity change its own
# image or Secrets). They ask for promotion by writing one key of a ConfigMap of their own, which
# is all their Role grants; the operator turns a new value into the promote annotation.
PROMOTION_REQUEST_KEY = "requested"
PROMOTION_REQUEST_COMPONENT = "promotion-request"


def promotion_request_name(region_name: str) -> str:
    """The ConfigMap through which region ``region_name``'s pods ask to be promoted."""
    return f"memoria-{region_name}-promote"


# -- connection URL schemes -----------------------------------------------------------------------
# What each sync backend and the store accept. The settings model, the CRD's pattern checks in the
# operator and the Secret checks all read these, so a scheme accepted in one place is accepted in
# all of them.
SYNC_URL_SCHEMES: dict[str, tuple[str, ...]] = {
    "redis": ("redis://", "rediss://", "unix://"),
    "postgres": ("postgresql://", "postgres://"),
}
STORE_URL_SCHEMES: tuple[str, ...] = ("sqlite:///", "postgresql://", "postgres://")
POSTGRES_URL_SCHEMES: tuple[str, ...] = SYNC_URL_SCHEMES["postgres"]


def url_scheme_problem(url: str, backend: str) -> str | None:
    """None when ``url`` fits the sync ``backend``; else what is expected, for an error message.
    Never echoes the URL (it may hold a password)."""
    schemes = SYNC_URL_SCHEMES.get(backend)
    if schemes is None or url.startswith(schemes):
        return None
    return f"not a {backend} URL (expected {' or '.join(schemes)})"


# -- Kubernetes credentials -----------------------------------------------------------------------
def in_cluster() -> bool:
    """True inside a pod: the kubelet sets ``KUBERNETES_SERVICE_HOST`` for every container."""
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


def kubeconfig_path(kubeconfig: str | None = None) -> str:
    """The kubeconfig to read outside a pod: the given one, ``$KUBECONFIG`` as it is now (not as
    it was when the kubernetes package was imported), or ``~/.kube/config``."""
    return kubeconfig or os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")


def api_call(
    api_client: Any,
    method: str,
    path: str,
    *,
    body: Any = None,
    query: dict[str, str] | None = None,
    content_type: str = "application/json",
    timeout: float = 10.0,
) -> Any:
    """One request through a bare ``ApiClient``, its body read; the caller checks the status.
    Bypasses the generated API classes, whose modules (CoreV1Api above all) take seconds to
    import on a busy machine."""
    method, url, headers, payload, _ = api_client.param_serialize(
        method=method,
        resource_path=path,
        query_params=list((query or {}).items()),
        header_params={"Content-Type": content_type, "Accept": "application/json"},
        body=body,
        auth_settings=["BearerToken"],
    )
    resp = api_client.call_api(
        method, url, header_params=headers, body=payload, _request_timeout=timeout
    )
    resp.read()
    return resp


def load_api_client(kubeconfig: str | None = None) -> Any:
    """A ``kubernetes.client.ApiClient``: in-cluster credentials inside a pod unless a kubeconfig
    is given, otherwise :func:`kubeconfig_path`. Raises what the kubernetes client raises
    (``ConfigException``, ``OSError``); callers turn that into their own error."""
    from kubernetes import client, config

    if kubeconfig is None and in_cluster():
        config.load_incluster_config()  # type: ignore[no-untyped-call]
        return client.ApiClient()
    return config.new_client_from_config(config_file=kubeconfig_path(kubeconfig))  # type: ignore[no-untyped-call]
