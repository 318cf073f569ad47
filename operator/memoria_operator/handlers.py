"""kopf handlers: small, typed, and only glue. The logic is in reconcile.py and leadership.py.

``kopf run -m memoria_operator.handlers`` (or ``memoria-operator run``) loads them.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import kopf

from memoria.contract import in_cluster, load_api_client

from .config import GROUP, PLURAL, VERSION, load_config
from .kube import Kube, region_path
from .leadership import LeadershipManager
from .metrics import OperatorMetrics
from .reconcile import Reconciler

REGIONS = (GROUP, VERSION, PLURAL)
MANAGED = {"app.kubernetes.io/managed-by": "memoria-operator"}
# decorators need it at import time; the Helm chart sets the same variable for both
RESYNC_SECONDS = float(os.environ.get("MEMORIA_OPERATOR_RESYNC_SECONDS", "30"))


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In-cluster credentials in a pod, else $KUBECONFIG as it is now (kopf's default login
    through the kubernetes client would read the path fixed when that package was imported)."""
    if in_cluster():
        return kopf.login_with_service_account(**kwargs)
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
    kube = Kube(load_api_client())
    memo.config = config
    memo.kube = kube
    memo.metrics = OperatorMetrics()
    memo.reconciler = Reconciler(kube, config.default_image, memo.metrics)
    memo.leadership = LeadershipManager(kube, config, memo.metrics)
    memo.leadership_task = asyncio.create_task(memo.leadership.run(), name="leadership")
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
    task: asyncio.Task[None] | None = memo.get("leadership_task")
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@kopf.on.resume(*REGIONS)
@kopf.on.create(*REGIONS)
@kopf.on.update(*REGIONS)
def reconcile_region(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    memo.reconciler.reconcile(dict(body))
    memo.leadership.wake()


@kopf.timer(*REGIONS, interval=RESYNC_SECONDS, initial_delay=RESYNC_SECONDS)
def resync_region(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """The level-based safety net: a Secret created later, a missed event."""
    memo.reconciler.reconcile(dict(body))


@kopf.on.event(*REGIONS)
def observe_region(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
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
