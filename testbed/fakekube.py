"""An in-memory stand-in for the operator's :class:`~memoria_operator.kube.Kube`, for fast unit
tests of the code above it (the reconciler).

:class:`FakeKube` is the real ``Kube`` with its one transport method, ``request``, answered from
a dict of objects instead of an API server, so everything the operator layers on top (``get``
turning 404 into ``None``, writes turning 409 into ``Conflict``, ``update_status``'s guarded
retries, Events) runs as written. What it keeps of an API server's semantics:

* namespaced objects live at their REST paths; reads and writes hand out copies, never shared
  dicts;
* ``resourceVersion`` moves on every write that changes something (and only then, so an
  idempotent apply is visible as such); ``generation`` moves when ``spec`` does;
* 404 for a missing object, 409 for a create of an existing one or for a write whose
  ``metadata.resourceVersion`` is stale;
* server-side apply (``application/apply-patch+yaml``) creates or merges the applied fields
  (lists replaced whole, as our objects' lists are atomic); a JSON merge patch follows RFC 7386;
  writes to ``/status`` change only ``status``, other writes never change it;
* collection GETs filter by an equality ``labelSelector``.

Not modelled: admission, schema validation and defaulting, field ownership, owner-reference
garbage collection, watches. The e2e tests cover those on a real API server.
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from kubernetes.client.exceptions import ApiException

from memoria_operator.kube import Kube, path_for

T = TypeVar("T")
_NOW = "2030-01-01T00:00:00Z"  # creationTimestamp of every object (nothing here reads clocks)


def _copy(obj: T) -> T:
    """A deep copy through JSON: what a round trip to an API server would return."""
    copied: T = json.loads(json.dumps(obj))
    return copied


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: dicts merge key by key, ``None`` deletes a key, anything else replaces."""
    if not isinstance(patch, dict):
        return _copy(patch)
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = _merge_patch(merged.get(key), value)
    return merged


def _merged(current: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    merged: dict[str, Any] = _merge_patch(current, patch)
    return merged


@dataclass(frozen=True)
class _Path:
    collection: str  # .../namespaces/<ns>/<plural>
    namespace: str
    name: str | None
    subresource: str | None

    @classmethod
    def parse(cls, path: str) -> _Path:
        parts = path.rstrip("/").split("/")
        i = parts.index("namespaces")
        rest = parts[i + 3 :]
        return cls(
            collection="/".join(parts[: i + 3]),
            namespace=parts[i + 1],
            name=rest[0] if rest else None,
            subresource=rest[1] if len(rest) > 1 else None,
        )

    @property
    def object(self) -> str:
        return f"{self.collection}/{self.name}"


def _error(status: int, reason: str, path: str) -> ApiException:
    return ApiException(status=status, reason=reason, body=json.dumps({"message": path}))


class FakeKube(Kube):
    """The operator's ``Kube`` over a dict of objects. ``objects`` maps REST paths (as
    :func:`~memoria_operator.kube.path_for` spells them) to objects; ``requests`` records each
    ``(method, path)`` in order."""

    def __init__(self) -> None:
        super().__init__(api_client=None)
        self.objects: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []
        self._versions = itertools.count(1)
        # (path, times): the next writes of that path answer 409 as if another writer won
        self._stale: dict[str, int] = {}

    # -- what tests use to set the scene and look at the result -------------------------------

    def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Store ``obj`` as a client would create it (server fields filled in); returns it."""
        meta = obj["metadata"]
        path = path_for(obj["apiVersion"], obj["kind"], meta["namespace"])
        created: dict[str, Any] = self.request("POST", path, body=obj)
        return created

    def mark_available(self, namespace: str, deployment: str) -> None:
        """Report the Deployment available, as the deployment controller would once its pods
        are up."""
        self.merge_patch(
            f"{path_for('apps/v1', 'Deployment', namespace, deployment)}/status",
            {
                "status": {
                    "availableReplicas": 1,
                    "conditions": [{"type": "Available", "status": "True"}],
                }
            },
        )

    def find(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any]:
        """The stored object (a copy); KeyError when there is none."""
        return _copy(self.objects[path_for(api_version, kind, namespace, name)])

    def events(self, namespace: str, name: str) -> list[dict[str, Any]]:
        """The Events posted about object ``name``, in order."""
        prefix = path_for("v1", "Event", namespace) + "/"
        return [
            _copy(obj)
            for path, obj in self.objects.items()
            if path.startswith(prefix) and obj["involvedObject"]["name"] == name
        ]

    def writes(self) -> list[tuple[str, str]]:
        """The requests that were not reads."""
        return [(m, p) for m, p in self.requests if m != "GET"]

    def conflict_next(self, path: str, times: int = 1) -> None:
        """Answer the next ``times`` writes of ``path`` with 409, as a lost race would."""
        self._stale[path] = times

    # -- the transport ---------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        self.requests.append((method, path))
        where = _Path.parse(path)
        if where.name is None:
            if method == "GET":
                return {"items": self._list(where, (query or {}).get("labelSelector"))}
            if method == "POST":
                return self._create(where, body)
        elif method == "GET":
            return _copy(self._existing(where))
        elif method == "DELETE":
            self._existing(where)
            del self.objects[where.object]
            return {"kind": "Status", "status": "Success"}
        elif method == "PATCH" and content_type == "application/apply-patch+yaml":
            if where.object not in self.objects:
                return self._create(_Path.parse(where.collection), body)
            return self._change(where, body, lambda current: _merged(current, body))
        elif method == "PATCH":
            return self._change(where, body, lambda current: _merged(current, body))
        elif method == "PUT":
            return self._change(where, body, lambda current: _copy(body))
        raise _error(405, "MethodNotAllowed", f"{method} {path}")

    def _list(self, where: _Path, selector: str | None) -> list[dict[str, Any]]:
        wanted = dict(term.split("=", 1) for term in selector.split(",")) if selector else {}
        found = []
        for path, obj in self.objects.items():
            labels = obj["metadata"].get("labels") or {}
            if path.rsplit("/", 1)[0] == where.collection and wanted.items() <= labels.items():
                found.append(_copy(obj))
        return found

    def _existing(self, where: _Path) -> dict[str, Any]:
        found = self.objects.get(where.object)
        if found is None:
            raise _error(404, "NotFound", where.object)
        return found

    def _create(self, where: _Path, body: dict[str, Any]) -> dict[str, Any]:
        obj: dict[str, Any] = _copy(body)
        meta = obj["metadata"]
        path = f"{where.collection}/{meta['name']}"
        if path in self.objects:
            raise _error(409, "AlreadyExists", path)
        meta.update(
            namespace=where.namespace,
            uid=str(uuid.uuid4()),
            resourceVersion=str(next(self._versions)),
            creationTimestamp=_NOW,
            generation=1,
        )
        self.objects[path] = obj
        return _copy(obj)

    def _change(
        self,
        where: _Path,
        body: dict[str, Any],
        change: Callable[[dict[str, Any]], dict[str, Any]],
    ) -> dict[str, Any]:
        current = self._existing(where)
        asked = ((body or {}).get("metadata") or {}).get("resourceVersion")
        lost_race = self._stale.get(where.object, 0)
        if lost_race:
            self._stale[where.object] = lost_race - 1
        if lost_race or (asked is not None and asked != current["metadata"]["resourceVersion"]):
            raise _error(409, "Conflict", where.object)
        changed = change(current)
        if where.subresource == "status":
            new = {**current, "status": changed.get("status")}
        else:
            # what a client cannot change through the main resource: status, server fields
            fixed = ("uid", "creationTimestamp", "namespace", "resourceVersion", "generation")
            meta = {**changed["metadata"], **{k: current["metadata"][k] for k in fixed}}
            new = {**changed, "metadata": meta, "status": current.get("status")}
        new = {k: v for k, v in new.items() if v is not None}
        if new == current:
            return _copy(current)
        new["metadata"] = dict(new["metadata"])
        if new.get("spec") != current.get("spec"):
            new["metadata"]["generation"] += 1
        new["metadata"]["resourceVersion"] = str(next(self._versions))
        self.objects[where.object] = new
        return _copy(new)
