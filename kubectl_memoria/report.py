"""``kubectl memoria report``: one tarball with what a support request needs, secrets removed.

What goes in (each a file of the archive, plus ``index.json`` listing what could not be read):
the MemoriaRegions, the objects the operator made for them (Deployments, Services, ConfigMaps,
ServiceAccounts, Roles, RoleBindings), the Leases, the Events, the status report of
``kubectl memoria status``, each region's ``/healthz``, the logs of the regions' pods and of the
operator's pods, and the Secrets the regions reference: their names and keys, never a value.

How secrets are kept out, in three layers, so that one missed field is not a leak:

1. Secrets are reduced to ``metadata.name`` and the list of their keys.
2. Every document is walked: values under secret-looking keys or env names (password, token,
   api key, connection URL, ...) become ``<redacted>``; every string has URL passwords masked;
   ``kubectl.kubernetes.io/last-applied-configuration`` (a copy of what was applied, Secrets
   included) is dropped.
3. Every value found in a referenced Secret (and its base64 form) is replaced by ``<redacted>``
   in every file, logs included, as the last step before writing.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import re
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import yaml

from .kube import ApiError, Cluster, KubeError
from .render import dump
from .status import leases_path, read, regions_path

REDACTED = "<redacted>"
_SECRET_NAME = re.compile(
    r"pass(word)?|secret|token|api[_-]?key|credential|private|connection(url|string|_url|_string)?"
    r"|dsn|database_url|__connection",
    re.IGNORECASE,
)
_LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
_MANAGED = "app.kubernetes.io/name=memoria"
_NAMESPACED = {
    "deployments": "/apis/apps/v1/namespaces/{ns}/deployments",
    "services": "/api/v1/namespaces/{ns}/services",
    "configmaps": "/api/v1/namespaces/{ns}/configmaps",
    "serviceaccounts": "/api/v1/namespaces/{ns}/serviceaccounts",
    "roles": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles",
    "rolebindings": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings",
}
LOG_LINES = "2000"


def _mask_url(text: str) -> str:
    from memoria.settings import mask_url  # pydantic is slow to import; only the report needs it

    return mask_url(text)


def redact(value: Any, key: str = "") -> Any:
    """``value`` with secret-looking fields replaced and URL passwords masked (layer 2)."""
    if isinstance(value, dict):
        if {"name", "value"} <= value.keys() and _SECRET_NAME.search(str(value["name"])):
            return {**value, "value": REDACTED}  # an env var: {name: ..., value: ...}
        return {
            k: (REDACTED if _SECRET_NAME.search(k) and isinstance(v, str) else redact(v, k))
            for k, v in value.items()
            if k != _LAST_APPLIED
        }
    if isinstance(value, list):
        return [redact(v, key) for v in value]
    if isinstance(value, str):
        return _mask_url(value)
    return value


def secret_summary(secret: dict[str, Any]) -> dict[str, Any]:
    """A Secret reduced to its name and key names (layer 1)."""
    meta = secret.get("metadata") or {}
    keys = sorted({*(secret.get("data") or {}), *(secret.get("stringData") or {})})
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": meta.get("name"), "namespace": meta.get("namespace")},
        "type": secret.get("type"),
        "keys": keys,
    }


def secret_values(secret: dict[str, Any]) -> set[str]:
    """Every value of a Secret, decoded and as stored (base64), to scrub from text (layer 3)."""
    found: set[str] = set()
    for raw in (secret.get("data") or {}).values():
        found.add(str(raw))
        try:
            found.add(base64.b64decode(raw).decode())
        except (ValueError, UnicodeDecodeError):
            continue
    found.update(str(v) for v in (secret.get("stringData") or {}).values())
    # short values (a port, "true") would redact half the bundle without protecting anything
    return {v for v in found if len(v) >= 6}


def scrub(text: str, values: set[str]) -> str:
    for value in sorted(values, key=len, reverse=True):
        text = text.replace(value, REDACTED)
    return _mask_url(text)


def referenced_secrets(regions: list[dict[str, Any]]) -> set[str]:
    """Names of the Secrets the regions' specs point at (any ``*SecretRef``)."""
    names: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                if k.endswith("SecretRef") and isinstance(v, dict) and v.get("name"):
                    names.add(str(v["name"]))
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    for region in regions:
        walk(region.get("spec"))
    return names


@dataclass
class Bundle:
    """The archive's files as text, and what could not be collected."""

    files: dict[str, str] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    secrets: set[str] = field(default_factory=set)

    def add(self, name: str, data: Any) -> None:
        self.files[name] = data if isinstance(data, str) else yaml.safe_dump(redact(data))

    def attempt(self, name: str, read: Callable[[], Any]) -> Any:
        try:
            data = read()
        except KubeError as exc:
            self.missing[name] = str(exc)
            return None
        self.add(name, data)
        return data

    def tarball(self) -> bytes:
        buf = io.BytesIO()
        now = dt.datetime.now(dt.UTC).timestamp()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for name, text in sorted(self.files.items()):
                data = scrub(text, self.secrets).encode()
                info = tarfile.TarInfo(f"memoria-report/{name}")
                info.size, info.mtime, info.mode = len(data), int(now), 0o600
                tar.addfile(info, io.BytesIO(data))
        return buf.getvalue()


def _items(cluster: Cluster, path: str, **query: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cluster.get(path, **query).get("items") or []
    return items


def _logs(cluster: Cluster, bundle: Bundle, prefix: str, pods: list[dict[str, Any]]) -> None:
    for pod in pods:
        meta = pod["metadata"]
        for container in (pod.get("spec") or {}).get("containers") or []:
            path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/log"
            name = f"logs/{prefix}/{meta['name']}.{container['name']}.log"
            status, data = cluster.raw(
                "GET", path, query={"container": container["name"], "tailLines": LOG_LINES}
            )
            if status == 200:
                bundle.add(name, data.decode(errors="replace"))
            else:
                bundle.missing[name] = f"pod log answered {status}"


def build_bundle(cluster: Cluster, namespace: str, operator_namespace: str | None) -> Bundle:
    """Read everything; raises :class:`KubeError` only when the regions cannot be listed."""
    bundle = Bundle()
    regions = _items(cluster, regions_path(namespace))
    bundle.add("memoriaregions.yaml", regions)
    for ref in sorted(referenced_secrets(regions)):
        try:
            secret = cluster.get(f"/api/v1/namespaces/{namespace}/secrets/{ref}")
        except KubeError as exc:
            bundle.missing[f"secrets/{ref}.yaml"] = str(exc)
            continue
        bundle.secrets |= secret_values(secret)
        bundle.add(f"secrets/{ref}.yaml", secret_summary(secret))
    for kind, path in _NAMESPACED.items():
        bundle.attempt(
            f"{kind}.yaml",
            partial(_items, cluster, path.format(ns=namespace), labelSelector=_MANAGED),
        )
    bundle.attempt("leases.yaml", lambda: _items(cluster, leases_path(namespace)))
    bundle.attempt("events.yaml", lambda: _items(cluster, f"/api/v1/namespaces/{namespace}/events"))
    reading = read(cluster, namespace)
    bundle.add("status.json", json.dumps([g.to_dict() for g in reading.report()], indent=2))
    for name, health in sorted(reading.health.items()):
        bundle.add(
            f"healthz/{name}.json",
            json.dumps({"via": health.via, "error": health.error, "body": health.body}, indent=2),
        )
    try:
        region_pods = _items(
            cluster,
            f"/api/v1/namespaces/{namespace}/pods",
            labelSelector=f"{_MANAGED},app.kubernetes.io/component=region",
        )
        _logs(cluster, bundle, "regions", region_pods)
    except KubeError as exc:
        bundle.missing["logs/regions"] = str(exc)
    selector = f"{_MANAGED},app.kubernetes.io/component=operator"
    where = (
        f"/api/v1/namespaces/{operator_namespace}/pods" if operator_namespace else "/api/v1/pods"
    )
    try:
        operator_pods = _items(cluster, where, labelSelector=selector)
        _logs(cluster, bundle, "operator", operator_pods)
        if not operator_pods:
            bundle.missing["logs/operator"] = f"no pod labelled {selector}"
    except ApiError as exc:
        bundle.missing["logs/operator"] = f"{exc} (try --operator-namespace)"
    bundle.add(
        "index.json",
        json.dumps(
            {
                "namespace": namespace,
                "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "files": sorted(bundle.files),
                "not_collected": bundle.missing,
            },
            indent=2,
        ),
    )
    return bundle


def summary(bundle: Bundle, path: str, output: str) -> None:
    data = {"file": path, "files": sorted(bundle.files), "not_collected": bundle.missing}
    if output != "table":
        dump(data, "json" if output == "json" else "yaml")
        return
    print(f"wrote {path}: {len(bundle.files)} files, secrets redacted")
    for name, why in sorted(bundle.missing.items()):
        print(f"  not collected: {name}: {why}")
