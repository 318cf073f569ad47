"""Level-based reconciliation of one MemoriaRegion into what it owns, and its status.

Every call compares the world with the spec from scratch and converges, so it can run at any
time, any number of times: on create/update/resume, on a timer, and whenever an owned Deployment
changes or disappears (which is how manual edits are reverted within a second). A short list of
guarded steps:

1. check what the schema cannot (time zone, consistent choices)   -> ConfigValid
2. check the Secrets the pods will read (exist, have the key, sane) -> SecretsAvailable
3. server-side apply ServiceAccount, Role, RoleBinding, Service, Deployment
4. read the Deployment's availability                            -> DeploymentAvailable
5. Ready = all of the above; status and Events only where something changed
"""

from __future__ import annotations

import base64
import logging
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from memoria.contract import POSTGRES_URL_SCHEMES, url_scheme_problem

from . import conditions as c
from .kube import Conflict, Kube, path_for
from .metrics import OperatorMetrics
from .model import Region, config_problems
from .render import deployment_scheduler_on, render_all, secret_refs
from .render import selector as render_selector

log = logging.getLogger("memoria_operator.reconcile")


@dataclass
class ReconcileResult:
    ready: bool
    conditions: list[dict[str, Any]]
    changed: list[str] = field(default_factory=list)  # "Created Deployment x", ...
    deployment_available: bool = False


def _secret_problem(kube: Kube, region: Region) -> tuple[str, str] | None:
    """(reason, message) for the first Secret problem, never quoting a Secret's value."""
    for field_path, ref in secret_refs(region):
        secret = kube.get(path_for("v1", "Secret", region.namespace, ref.name))
        where = f"Secret {ref.name} ({field_path}) in namespace {region.namespace}"
        if secret is None:
            return c.SECRET_MISSING, f"{where} does not exist; create it with key {ref.key!r}"
        raw = (secret.get("data") or {}).get(ref.key)
        if raw is None:
            keys = ", ".join(sorted((secret.get("data") or {}).keys())) or "none"
            return c.SECRET_KEY_MISSING, f"{where} has no key {ref.key!r} (keys: {keys})"
        try:
            value = base64.b64decode(raw).decode().strip()
        except ValueError:  # binascii.Error (not base64) and UnicodeDecodeError are ValueErrors
            return c.SECRET_INVALID, f"{where}: key {ref.key!r} is not UTF-8 text"
        if not value:
            return c.SECRET_INVALID, f"{where}: key {ref.key!r} is empty"
        if field_path == "spec.sync.connectionSecretRef":
            problem = url_scheme_problem(value, region.spec.sync.backend)
            if problem:
                return c.SECRET_INVALID, f"{where}: key {ref.key!r} is {problem}"
        if field_path == "spec.store.connectionSecretRef" and not value.startswith(
            POSTGRES_URL_SCHEMES
        ):
            return c.SECRET_INVALID, f"{where}: key {ref.key!r} is not a postgresql:// URL"
    return None


# Container states that will not heal by waiting: the region's condition names them, so a user
# sees "ImagePullBackOff" rather than a rollout that seems merely slow.
STUCK_REASONS = frozenset(
    {
        "ImagePullBackOff",
        "ErrImagePull",
        "ErrImageNeverPull",
        "InvalidImageName",
        "CrashLoopBackOff",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)


def _pods_stuck(kube: Kube, region: Region) -> tuple[str, str] | None:
    """(reason, message) of the first of the region's containers that is stuck, if any."""
    selector = ",".join(f"{k}={v}" for k, v in sorted(render_selector(region).items()))
    try:
        pods = kube.list(path_for("v1", "Pod", region.namespace), labelSelector=selector)
    except Exception as exc:  # a missing RBAC rule or an API hiccup: availability still stands
        log.debug("%s: could not list pods: %s", region.key, exc)
        return None
    for pod in pods:
        statuses = (pod.get("status") or {}).get("containerStatuses") or []
        for status in statuses:
            waiting = (status.get("state") or {}).get("waiting") or {}
            why = waiting.get("reason")
            if why in STUCK_REASONS:
                detail = (waiting.get("message") or "").strip()
                restarts = status.get("restartCount") or 0
                message = (
                    f"pod {pod['metadata']['name']}: container {status.get('name')} is waiting "
                    f"({why}, {restarts} restart(s))"
                )
                return why, f"{message}: {detail[:300]}" if detail else message
    return None


def _secrets_condition(region: Region, problem: tuple[str, str] | None, gen: int) -> dict[str, Any]:
    if problem:
        return c.condition(c.SECRETS_AVAILABLE, False, *problem, gen)
    n = len(secret_refs(region))
    return c.condition(
        c.SECRETS_AVAILABLE, True, c.SECRETS_FOUND, f"{n} Secret reference(s) resolved", gen
    )


def _ownership_condition(region: Region, foreign: list[str], gen: int) -> dict[str, Any]:
    if not foreign:
        return c.condition(c.RESOURCES_OWNED, True, c.OWNED, "all objects are ours", gen)
    return c.condition(
        c.RESOURCES_OWNED,
        False,
        c.CONFLICT,
        f"{', '.join(foreign)} already exist(s) in namespace {region.namespace} and are not "
        "managed by memoria-operator; the operator will not take them over: rename or delete "
        "them, or rename this MemoriaRegion",
        gen,
    )


def _path_of(obj: dict[str, Any]) -> str:
    meta = obj["metadata"]
    return path_for(obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"])


def owned_by(existing: dict[str, Any] | None, region: Region) -> bool:
    """True when the operator may write ``existing`` for ``region``: it does not exist yet, it
    is owned by this region, or it carries our managed-by label for this region (an object of
    an earlier incarnation of the region). Anything else belongs to someone else and is never
    adopted or overwritten."""
    if existing is None:
        return True
    meta = existing.get("metadata") or {}
    if any(ref.get("uid") == region.uid for ref in meta.get("ownerReferences") or []):
        return True
    labels = meta.get("labels") or {}
    return (
        labels.get("app.kubernetes.io/managed-by") == "memoria-operator"
        and labels.get("app.kubernetes.io/instance") == region.name
    )


def _deployment_availability(
    deployment: dict[str, Any] | None, replicas: int
) -> tuple[bool, str, str]:
    if deployment is None:
        return False, c.UNAVAILABLE, "the Deployment does not exist yet"
    status = deployment.get("status") or {}
    available = status.get("availableReplicas") or 0
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Available":
            ok = cond.get("status") == "True"
            msg = f"{available}/{replicas} replicas available"
            if not ok and cond.get("message"):
                msg += f": {cond['message']}"
            return ok, c.AVAILABLE if ok else c.UNAVAILABLE, msg
    return False, c.PROGRESSING, f"{available}/{replicas} replicas available (rolling out)"


def _scheduler_kept(region: Region, deployment: dict[str, Any] | None) -> bool:
    """``control: env``: the scheduler switch as the Deployment has it, never changed here. A
    new Deployment, or one that followed the Lease until now, starts with the scheduler off;
    the leadership loop turns it on for the Lease holder (leadership/envcontrol.py)."""
    return bool(region.env_control and deployment_scheduler_on(deployment))


class Reconciler:
    def __init__(
        self, kube: Kube, default_image: str, metrics: OperatorMetrics | None = None
    ) -> None:
        self.kube = kube
        self.default_image = default_image
        self.metrics = metrics
        self._locks: dict[str, threading.Lock] = defaultdict(threading.Lock)

    def reconcile(self, body: dict[str, Any]) -> ReconcileResult:
        region = Region.from_body(body)
        with self._locks[region.key]:  # one reconcile per region at a time, whatever woke it
            try:
                result = self._reconcile_fresh(region, body)
            except Exception:  # whatever failed is counted, then kopf retries it
                if self.metrics:
                    self.metrics.reconciles.labels("error").inc()
                raise
        if self.metrics:
            self.metrics.reconciles.labels("ready" if result.ready else "not_ready").inc()
        return result

    def _reconcile_fresh(self, region: Region, body: dict[str, Any]) -> ReconcileResult:
        """``_reconcile``, again from fresh reads when the Deployment changed under it (the
        leadership loop flipped an env region's scheduler meanwhile)."""
        for _ in range(3):
            try:
                return self._reconcile(region, body)
            except Conflict:
                log.info("%s: Deployment changed while reconciling; again", region.key)
        return self._reconcile(region, body)

    def _reconcile(self, region: Region, body: dict[str, Any]) -> ReconcileResult:
        gen = region.generation
        updates: list[dict[str, Any]] = []
        changed: list[str] = []

        problems = config_problems(region.spec)
        if problems:
            reason = problems[0][0]
            updates.append(
                c.condition(c.CONFIG_VALID, False, reason, "; ".join(m for _, m in problems), gen)
            )
        else:
            updates.append(c.condition(c.CONFIG_VALID, True, c.VALID, "spec is consistent", gen))

        secret = _secret_problem(self.kube, region)
        updates.append(_secrets_condition(region, secret, gen))

        deployment: dict[str, Any] | None
        dep_path = path_for("apps/v1", "Deployment", region.namespace, region.workload_name)
        existing = self.kube.get(dep_path)
        wanted = render_all(region, self.default_image, _scheduler_kept(region, existing))
        current = {id(obj): self.kube.get(_path_of(obj)) for obj in wanted}
        if region.env_control and existing is not None:
            for obj in wanted:
                if obj["kind"] == "Deployment":
                    # the scheduler switch is the leadership loop's to flip: write only over
                    # the Deployment read above, so a flip made meanwhile is never undone
                    # (a Conflict, and kopf reconciles again from what is there then)
                    obj["metadata"]["resourceVersion"] = existing["metadata"]["resourceVersion"]
        foreign = [
            f"{obj['kind']} {obj['metadata']['name']}"
            for obj in wanted
            if not owned_by(current[id(obj)], region)
        ]
        updates.append(_ownership_condition(region, foreign, gen))
        if problems or secret or foreign:
            # a spec the pods cannot run, a Secret they would not find, or a name taken by
            # someone else: leave what is deployed alone until it is fixed
            deployment = self.kube.get(dep_path)
            if not owned_by(deployment, region):
                deployment = None  # someone else's Deployment says nothing about this region
        else:
            deployment = None
            for obj in wanted:
                meta = obj["metadata"]
                before = current[id(obj)]
                after = self.kube.apply(obj)
                if before is None:
                    changed.append(f"Created {obj['kind']} {meta['name']}")
                elif before["metadata"]["resourceVersion"] != after["metadata"]["resourceVersion"]:
                    changed.append(f"Updated {obj['kind']} {meta['name']}")
                if obj["kind"] == "Deployment":
                    deployment = after

        ok, reason, message = self._availability(region, deployment)
        updates.append(c.condition(c.DEPLOYMENT_AVAILABLE, ok, reason, message, gen))
        failing = [u for u in updates if u["status"] != "True"]
        written = self._write_status(region, body, updates, changed)
        return ReconcileResult(not failing, written, changed, ok)

    def _availability(
        self, region: Region, deployment: dict[str, Any] | None
    ) -> tuple[bool, str, str]:
        """The DeploymentAvailable condition: the Deployment's own word, or why its pods are
        stuck when they are."""
        ok, reason, message = _deployment_availability(deployment, region.spec.replicas)
        if not ok and deployment is not None:
            stuck = _pods_stuck(self.kube, region)
            if stuck:
                reason, message = stuck
        return ok, reason, message

    def _write_status(
        self,
        region: Region,
        body: dict[str, Any],
        updates: list[dict[str, Any]],
        changed: list[str],
    ) -> list[dict[str, Any]]:
        """Write ``updates`` with Ready summed up from them and the status as read at the write
        (the Healthy condition there is the leadership loop's newest; one from the body kopf
        handed over may be older). Returns the conditions written, Ready first."""
        transitions: list[dict[str, Any]] = []
        written: list[dict[str, Any]] = []

        def mutate(status: dict[str, Any]) -> None:
            transitions.clear()  # called again on a write conflict: count from the fresh read
            old = status.get("conditions") or []
            ready = c.ready(c.merge(old, updates), region.generation)
            written[:] = [ready, *updates]
            for new in written:
                prev = c.find(old, new["type"])
                if new["type"] == c.READY:
                    if c.ready_changed(prev, new):
                        transitions.append(new)
                elif prev is None or (prev.get("status"), prev.get("reason")) != (
                    new["status"],
                    new["reason"],
                ):
                    transitions.append(new)
            status["conditions"] = c.merge(old, written)
            status["observedGeneration"] = region.generation
            status["deployment"] = region.workload_name
            status["service"] = region.workload_name

        self.kube.update_status(region.namespace, region.name, mutate)
        for what in changed:
            self.kube.event(body, "Normal", what.split()[0], what)
            log.info("%s: %s", region.key, what)
        for cond in transitions:
            if cond["type"] == c.READY:
                self.kube.event(body, *c.ready_event(cond))
            elif cond["status"] != "True" and cond["reason"] != c.PROGRESSING:
                self.kube.event(body, "Warning", cond["reason"], cond["message"])
        return written
