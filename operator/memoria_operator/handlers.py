"""kopf handlers: small, typed, and only glue. The logic is in reconcile.py and leadership/.

``import memoria_operator`` loads them, so ``kopf run -m memoria_operator`` serves them, as
``memoria-operator run`` does.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

import kopf

from memoria.contract import PROMOTION_REQUEST_KEY, in_cluster, load_api_client

from .config import GROUP, KIND, PLURAL, PROMOTE_ANNOTATION, VERSION, load_config
from .kube import Kube, region_path
from .leadership import LeadershipManager
from .metrics import OperatorMetrics
from .reconcile import Reconciler

REGIONS = (GROUP, VERSION, PLURAL)
MANAGED = {"app.kubernetes.io/managed-by": "memoria-operator"}
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
log = logging.getLogger("memoria_operator.handlers")


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In-cluster credentials in a pod, else $KUBECONFIG as it is now (kopf's default login
    through the kubernetes client would read the path fixed when that package was imported).

    In a pod, the API server is the one the kubelet names in ``KUBERNETES_SERVICE_HOST`` and
    ``_PORT``, as for our own clients (memoria.contract.load_api_client): kopf's own
    service-account login dials ``kubernetes.default.svc``, which needs cluster DNS, so the
    operator and its election could otherwise talk to two different addresses."""
    if in_cluster():
        host = os.environ["KUBERNETES_SERVICE_HOST"]
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if ":" in host:  # an IPv6 address
            host = f"[{host}]"
        namespace_file = SERVICE_ACCOUNT_DIR / "namespace"
        return kopf.ConnectionInfo(
            server=f"https://{host}:{port}",
            ca_path=str(SERVICE_ACCOUNT_DIR / "ca.crt"),
            # the kubelet rotates this file; kopf logs in again on a 401 and re-reads it
            token=(SERVICE_ACCOUNT_DIR / "token").read_text().strip(),
            scheme="Bearer",
            default_namespace=(
                namespace_file.read_text().strip() if namespace_file.exists() else None
            ),
        )
    return kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup()
async def configure(
    settings: kopf.OperatorSettings, memo: kopf.Memo, logger: kopf.Logger, **_: Any
) -> None:
    config = load_config()
    # kopf's bookkeeping goes into annotations under our own prefix, not into status
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.posting.level = logging.ERROR  # our own Events are explicit and meaningful
    settings.execution.max_workers = 16
    settings.watching.server_timeout = 60
    settings.watching.client_timeout = 90
    settings.peering.standalone = True  # one active replica is ensured by our own Lease
    # No watching of CRDs and namespaces (which would need list/watch on both, cluster-wide):
    # the CRD is installed before the operator (the chart's crds/), and the operator serves
    # either every namespace or the ones named on its command line.
    settings.scanning.disabled = True
    kube = Kube(load_api_client())
    memo.config = config
    memo.kube = kube
    memo.metrics = OperatorMetrics()
    memo.reconciler = Reconciler(kube, config.default_image, memo.metrics)
    memo.leadership = LeadershipManager(kube, config, memo.metrics)
    memo.leadership_task = asyncio.create_task(memo.leadership.run(), name="leadership")
    memo.seen_regions = set()
    memo.resync_task = asyncio.create_task(
        resync_forever(memo, config.resync_seconds), name="resync"
    )
    if config.metrics_port:
        memo.metrics.serve(config.metrics_port)
    logger.info(
        "memoria-operator configured: lease %.1fs, renew %.1fs, retry %.1fs",
        config.lease_duration_seconds,
        config.renew_interval_seconds,
        config.retry_interval_seconds,
    )


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    tasks = [memo.get(name) for name in ("leadership_task", "resync_task")]
    for task in tasks:
        if task is not None:
            task.cancel()
    await asyncio.gather(*(t for t in tasks if t is not None), return_exceptions=True)


async def resync_forever(memo: kopf.Memo, interval: float) -> None:
    """The level-based safety net: every region kopf has shown us is reconciled at least every
    ``interval`` seconds (a Secret created later, a missed event). Only regions seen through
    kopf's watch, so the operator's namespace scope holds here too.

    This is a plain task, not a ``@kopf.timer``: kopf puts a finalizer on every object a timer
    watches, so regions could not be deleted while no operator runs (after ``helm uninstall``
    they hung in Terminating with their Deployments still serving). With no finalizer, deleting
    a region needs no operator: its Deployment, Service and RBAC go by owner reference."""
    while True:
        await asyncio.sleep(interval)
        for namespace, name in sorted(memo.seen_regions):
            try:
                body = await asyncio.to_thread(memo.kube.get, region_path(namespace, name))
                if body is None:
                    memo.seen_regions.discard((namespace, name))
                elif not body["metadata"].get("deletionTimestamp"):
                    await asyncio.to_thread(memo.reconciler.reconcile, body)
            except Exception as exc:  # the API may be away, or one region broken: next round
                log.warning("resync of %s/%s failed: %s", namespace, name, exc)


@kopf.on.resume(*REGIONS)
@kopf.on.create(*REGIONS)
@kopf.on.update(*REGIONS)
def reconcile_region(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    memo.reconciler.reconcile(dict(body))
    memo.leadership.wake()


@kopf.on.event(*REGIONS)
def observe_region(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    key = (body.metadata["namespace"], body.metadata["name"])
    if type == "DELETED":
        memo.seen_regions.discard(key)
    else:
        memo.seen_regions.add(key)
    memo.leadership.observe_region(dict(body), deleted=type == "DELETED")


@kopf.on.event("apps", "v1", "deployments", labels=MANAGED)
def owned_deployment_changed(
    body: kopf.Body,
    type: str | None,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    """A Deployment we own changed or vanished: reconcile its region (reverts drift)."""
    memo.leadership.observe_deployment(dict(body), deleted=type == "DELETED")
    if type not in ("MODIFIED", "DELETED"):
        return
    owner = next(
        (
            o
            for o in body.metadata.get("ownerReferences") or []
            if o.get("kind") == "MemoriaRegion" and o.get("controller")
        ),
        None,
    )
    if owner is None:
        return
    region = memo.kube.get(region_path(body.metadata["namespace"], owner["name"]))
    if region is not None and not region["metadata"].get("deletionTimestamp"):
        memo.reconciler.reconcile(region)


@kopf.on.event(
    "", "v1", "configmaps", labels={**MANAGED, "app.kubernetes.io/component": "promotion-request"}
)
def promotion_requested(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    """A region's pods asked to be promoted (POST /admin/promote): carry a new value over to the
    region's promote annotation, where the leadership loop answers it like a kubectl request.
    The pods can write only this ConfigMap, so they cannot change anything else of their
    region."""
    if type == "DELETED":
        return
    value = (body.get("data") or {}).get(PROMOTION_REQUEST_KEY)
    owner = next(
        (
            o
            for o in body.metadata.get("ownerReferences") or []
            if o.get("kind") == KIND and o.get("controller")
        ),
        None,
    )
    if not value or owner is None:
        return
    namespace = body.metadata["namespace"]
    region = memo.kube.get(region_path(namespace, owner["name"]))
    if region is None or region["metadata"].get("uid") != owner.get("uid"):
        return
    annotations = region["metadata"].get("annotations") or {}
    handled = ((region.get("status") or {}).get("leadership") or {}).get("lastPromotion")
    if not _newer(value, annotations.get(PROMOTE_ANNOTATION), handled):
        return  # already carried over or answered, or older than a request already made
    memo.kube.merge_patch(
        region_path(namespace, owner["name"]),
        {"metadata": {"annotations": {PROMOTE_ANNOTATION: value}}},
    )
    memo.leadership.wake()


def _newer(value: str, *seen: str | None) -> bool:
    """True when ``value`` (seconds since the epoch, as the runtime writes it) is later than every
    request already ``seen``; a replayed old ConfigMap never undoes a newer kubectl request."""
    try:
        mine = float(value)
    except ValueError:
        return False
    for other in seen:
        if other is None:
            continue
        try:
            if float(other) >= mine:
                return False
        except ValueError:
            continue  # not a time: it cannot be compared, so it does not block
    return True
