"""A thin, typed-enough Kubernetes REST layer over the official client's transport.

The operator works with plain dicts (the same shapes as the YAML users read), so this module
speaks JSON on paths instead of the generated models: GET, server-side apply, merge patches with
optimistic concurrency, status updates, Events. Authentication, TLS and in-cluster credentials
come from the ``kubernetes`` package.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import uuid
from collections.abc import Callable
from typing import Any, Literal

from kubernetes.client.exceptions import ApiException

from memoria.contract import api_call

from .config import FIELD_MANAGER, GROUP, PLURAL, VERSION
from .liveness import LIVENESS

log = logging.getLogger("memoria_operator.kube")

_PLURALS = {
    ("v1", "ServiceAccount"): "serviceaccounts",
    ("v1", "Service"): "services",
    ("v1", "Secret"): "secrets",
    ("v1", "Event"): "events",
    ("v1", "Pod"): "pods",
    ("v1", "ConfigMap"): "configmaps",
    ("v1", "PersistentVolumeClaim"): "persistentvolumeclaims",
    ("apps/v1", "Deployment"): "deployments",
    ("rbac.authorization.k8s.io/v1", "Role"): "roles",
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): "rolebindings",
    ("coordination.k8s.io/v1", "Lease"): "leases",
    (f"{GROUP}/{VERSION}", "MemoriaRegion"): PLURAL,
}


# the two types of core/v1 Event
EventType = Literal["Normal", "Warning"]


class Conflict(Exception):
    """The object changed since it was read (HTTP 409 on an update)."""


def path_for(api_version: str, kind: str, namespace: str, name: str | None = None) -> str:
    plural = _PLURALS[(api_version, kind)]
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = f"{base}/namespaces/{namespace}/{plural}"
    return f"{path}/{name}" if name else path


def region_path(namespace: str, name: str) -> str:
    return path_for(f"{GROUP}/{VERSION}", "MemoriaRegion", namespace, name)


class Kube:
    def __init__(self, api_client: Any, timeout: float = 10.0, *, liveness: bool = True) -> None:
        self.api = api_client
        self.timeout = timeout
        self.liveness = liveness  # False for a peer cluster's API: it says nothing of ours

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        resp = api_call(
            self.api,
            method,
            path,
            body=body,
            query=query,
            content_type=content_type,
            timeout=self.timeout,
        )
        if resp.status < 500 and self.liveness:
            LIVENESS.api_answered()  # readiness: the API server is reachable and answering
        if not 200 <= resp.status <= 299:
            raise ApiException(http_resp=resp)
        return json.loads(resp.data) if resp.data else None  # JSON of the API server

    def get(self, path: str) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = self.request("GET", path)
            return result
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def list(self, path: str, **query: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.request("GET", path, query=query or None)["items"]
        return items

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply as the operator's field manager, taking over fields someone else
        changed (that is how drift is reverted)."""
        meta = obj["metadata"]
        path = path_for(obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"])
        try:
            result: dict[str, Any] = self.request(
                "PATCH",
                path,
                body=obj,
                query={"fieldManager": FIELD_MANAGER, "force": "true"},
                content_type="application/apply-patch+yaml",
            )
        except ApiException as exc:
            if exc.status == 409:  # forced, so only a resourceVersion given as precondition
                raise Conflict(path) from None
            raise
        return result

    def _write(
        self, method: str, path: str, body: dict[str, Any], content_type: str = "application/json"
    ) -> dict[str, Any]:
        """A write that reports a lost optimistic-concurrency race as :class:`Conflict`."""
        try:
            result: dict[str, Any] = self.request(
                method, path, body=body, content_type=content_type
            )
            return result
        except ApiException as exc:
            if exc.status == 409:
                raise Conflict(path) from None
            raise

    def merge_patch(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._write("PATCH", path, body, "application/merge-patch+json")

    def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._write("POST", path, body)

    def replace(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._write("PUT", path, body)

    def delete(self, path: str) -> None:
        try:
            self.request("DELETE", path)
        except ApiException as exc:
            if exc.status != 404:
                raise

    def update_status(
        self,
        namespace: str,
        name: str,
        mutate: Callable[[dict[str, Any]], None],
        attempts: int = 5,
    ) -> dict[str, Any] | None:
        """Read the region, let ``mutate`` change a copy of its status, write it back only if
        it changed, guarded by resourceVersion (retried on conflicts). Two writers (the
        reconciler and the leadership loop) can never erase each other's fields."""
        path = region_path(namespace, name)
        for _ in range(attempts):
            current = self.get(path)
            if current is None:
                return None
            before = current.get("status") or {}
            after: dict[str, Any] = json.loads(json.dumps(before))
            mutate(after)
            if after == before:
                return before
            body = {
                "metadata": {"resourceVersion": current["metadata"]["resourceVersion"]},
                "status": after,
            }
            try:
                self.merge_patch(path + "/status", body)
                return after
            except Conflict:
                continue
        log.warning(
            "status of %s/%s: gave up after %d conflicting writers", namespace, name, attempts
        )
        return None

    def event(self, regarding: dict[str, Any], type_: EventType, reason: str, message: str) -> None:
        """Post a core/v1 Event about an object (best effort: never fails the caller)."""
        meta = regarding["metadata"]
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{meta['name']}.{uuid.uuid4().hex[:12]}",
                "namespace": meta["namespace"],
            },
            "involvedObject": {
                "apiVersion": regarding.get("apiVersion"),
                "kind": regarding.get("kind"),
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": "memoria-operator"},
            "reportingComponent": "memoria-operator",
            "reportingInstance": "memoria-operator",
            "firstTimestamp": now[:19] + "Z",
            "lastTimestamp": now[:19] + "Z",
            "eventTime": now,
            "action": reason,
            "count": 1,
        }
        try:
            self.request("POST", path_for("v1", "Event", meta["namespace"]), body=body)
        except Exception as exc:  # an Event is never worth failing for
            log.warning(
                "could not post event %s on %s/%s: %s", reason, meta["namespace"], meta["name"], exc
            )
