"""Pure rendering of what a MemoriaRegion owns: Deployment, Service, ServiceAccount, Role,
RoleBinding. No API calls here; everything is unit-tested without a cluster.

Secrets never reach plain env: URLs with credentials and the API key come from ``secretKeyRef``.
"""

from __future__ import annotations

from typing import Any

from memoria.contract import PROMOTION_REQUEST_COMPONENT, promotion_request_name

from .config import API_VERSION, GROUP, KIND
from .model import Region, SecretKeyRef

PORT = 8080
DATA_DIR = "/var/lib/memoria"
RUN_AS = 10001


def labels(region: Region) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "memoria",
        "app.kubernetes.io/instance": region.name,
        "app.kubernetes.io/component": "region",
        "app.kubernetes.io/managed-by": "memoria-operator",
        f"{GROUP}/region": region.spec.region,
        f"{GROUP}/group": region.spec.group,
    }


def selector(region: Region) -> dict[str, str]:
    return {"app.kubernetes.io/name": "memoria", "app.kubernetes.io/instance": region.name}


def owner_reference(region: Region) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": region.name,
        "uid": region.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(region: Region, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": region.namespace,
        "labels": labels(region),
        "ownerReferences": [owner_reference(region)],
    }


def _plain(name: str, value: str) -> dict[str, Any]:
    return {"name": name, "value": value}


def _secret(name: str, ref: SecretKeyRef) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}


def _bool(value: bool) -> str:
    return "true" if value else "false"


SCHEDULER_SWITCH = "DISABLE_SCHEDULERS"
LEADERSHIP_ENV_PREFIX = "MEMORIA_LEADERSHIP__"


def render_env(region: Region, scheduler_on: bool = False) -> list[dict[str, Any]]:
    """The runtime's environment, in the names of the guide and DESIGN.md.

    ``scheduler_on`` matters only with ``spec.scheduler.control: env``: the operator's word that
    this region may run its decrement (it holds the Lease and its predecessor has stopped).
    Otherwise ``DISABLE_SCHEDULERS`` says only ``spec.scheduler.enabled`` and the pods learn who
    leads from the Lease named by ``MEMORIA_LEADERSHIP__*``."""
    spec, sync = region.spec, region.spec.sync
    on = spec.scheduler.enabled and (scheduler_on or not region.env_control)
    env = [
        _plain("MEMORIA_REGION", spec.region),
        _plain("MEMORIA_HOST", "0.0.0.0"),  # noqa: S104 - the pod's own address
        _plain("MEMORIA_PORT", str(PORT)),
        _plain("MEMORIA_SYNC__ENABLED", _bool(sync.enabled)),
        _plain("MEMORIA_SYNC__BACKEND", sync.backend),
    ]
    if sync.connection_secret_ref is not None:
        env.append(_secret("MEMORIA_SYNC__CONNECTION_URL", sync.connection_secret_ref))
    elif sync.connection_url is not None:
        env.append(_plain("MEMORIA_SYNC__CONNECTION_URL", sync.connection_url))
    if sync.channel:  # unset: the runtime picks the guide's name for the backend
        env.append(_plain("MEMORIA_SYNC__CHANNEL", sync.channel))
    if sync.table:
        env.append(_plain("MEMORIA_SYNC__TABLE", sync.table))
    env += [
        _plain("MEMORIA_SYNC__PRIVACY_FLOOR", str(spec.privacy.floor)),
        _plain("MEMORIA_SYNC__PRIVACY_CEILING", str(spec.privacy.ceiling)),
        _plain("MEMORIA_SYNC__REALTIME_REPLICATION", _bool(sync.realtime_replication)),
        _plain("MEMORIA_SYNC__REPLICA_PROMOTION", sync.replica_promotion),
        _plain("DECREMENT_TZ", spec.scheduler.time_zone),
        _plain(SCHEDULER_SWITCH, _bool(not on)),
    ]
    if spec.store.connection_secret_ref is not None:
        env.append(_secret("MEMORIA_DATABASE__CONNECTION_STRING", spec.store.connection_secret_ref))
    else:
        env.append(
            _plain("MEMORIA_DATABASE__CONNECTION_STRING", f"sqlite:///{DATA_DIR}/memoria.db")
        )
    if spec.api_key_secret_ref is not None:
        env.append(_secret("MEMORIA_API_KEY", spec.api_key_secret_ref))
    if not region.env_control:
        env += [
            _plain(f"{LEADERSHIP_ENV_PREFIX}LEASE_NAME", region.lease_name),
            _plain(f"{LEADERSHIP_ENV_PREFIX}LEASE_NAMESPACE", region.namespace),
            _plain(f"{LEADERSHIP_ENV_PREFIX}IDENTITY", region.identity),
        ]
    return env


def deployment_scheduler_on(deployment: dict[str, Any] | None) -> bool | None:
    """What a Deployment rendered for ``control: env`` tells its pods: True when its template
    says ``DISABLE_SCHEDULERS=false``; None when there is no such Deployment (none at all, or one
    rendered for ``control: lease``, whose pods follow the Lease instead)."""
    if deployment is None:
        return None
    try:
        container = deployment["spec"]["template"]["spec"]["containers"][0]
    except (KeyError, IndexError, TypeError):
        return None
    env = {e.get("name"): e.get("value") for e in container.get("env") or []}
    if any(str(name).startswith(LEADERSHIP_ENV_PREFIX) for name in env):
        return None
    return env.get(SCHEDULER_SWITCH) == "false"


def secret_refs(region: Region) -> list[tuple[str, SecretKeyRef]]:
    """(field path, reference) of every Secret the region's pods need."""
    spec = region.spec
    refs: list[tuple[str, SecretKeyRef]] = []
    if spec.sync.connection_secret_ref is not None:
        refs.append(("spec.sync.connectionSecretRef", spec.sync.connection_secret_ref))
    if spec.store.connection_secret_ref is not None:
        refs.append(("spec.store.connectionSecretRef", spec.store.connection_secret_ref))
    if spec.api_key_secret_ref is not None:
        refs.append(("spec.apiKeySecretRef", spec.api_key_secret_ref))
    return refs


def _probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


def _tcp_probe(period: int, failures: int) -> dict[str, Any]:
    return {
        "tcpSocket": {"port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


def render_deployment(
    region: Region, default_image: str, scheduler_on: bool = False
) -> dict[str, Any]:
    """The region's Deployment. With ``control: env`` the image is run as it is (its own
    entrypoint, probed on its port, no API credentials): all it must honour is the guide's
    environment (docs/install.md, "Bring your own Memoria image")."""
    spec = region.spec
    resources: dict[str, Any] = {}
    if spec.resources.requests:
        resources["requests"] = dict(spec.resources.requests)
    if spec.resources.limits:
        resources["limits"] = dict(spec.resources.limits)
    container: dict[str, Any] = {
        "name": "memoria",
        "image": spec.image or default_image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": ["memoria"],
        "args": ["serve", "--host", "0.0.0.0", "--port", str(PORT)],  # noqa: S104
        "ports": [{"name": "http", "containerPort": PORT, "protocol": "TCP"}],
        "env": render_env(region, scheduler_on),
        "resources": resources,
        "readinessProbe": _probe("/healthz", 5, 3),
        "livenessProbe": _probe("/healthz", 10, 6),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [
            {"name": "data", "mountPath": DATA_DIR},
            {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108 - a private emptyDir
        ],
    }
    if region.env_control:
        # any guide-conforming image: its own command, and the kubelet asks only that it
        # listens (a /healthz is optional; the operator uses it when it answers)
        del container["command"], container["args"]
        container["readinessProbe"] = _tcp_probe(5, 3)
        container["livenessProbe"] = _tcp_probe(10, 6)
    persistent = spec.store.embedded and spec.store.persistence.enabled
    data_volume: dict[str, Any] = (
        {"name": "data", "persistentVolumeClaim": {"claimName": region.data_claim_name}}
        if persistent
        else {"name": "data", "emptyDir": {}}
    )
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(region, region.workload_name),
        "spec": {
            "replicas": spec.replicas,
            # one SQLite file on one claim: the old pod stops before the new one opens it
            "strategy": {"type": "Recreate"} if persistent else {"type": "RollingUpdate"},
            "selector": {"matchLabels": selector(region)},
            "template": {
                "metadata": {"labels": labels(region)},
                "spec": {
                    "serviceAccountName": region.workload_name,
                    # the Lease watch needs it; an env-controlled image gets no credentials
                    "automountServiceAccountToken": not region.env_control,
                    "securityContext": {"runAsNonRoot": True, "fsGroup": RUN_AS},
                    "terminationGracePeriodSeconds": 30,
                    "containers": [container],
                    "volumes": [
                        data_volume,
                        {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
                    ],
                },
            },
        },
    }


def render_service(region: Region) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(region, region.workload_name),
        "spec": {
            "type": "ClusterIP",
            "selector": selector(region),
            "ports": [{"name": "http", "port": PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def render_service_account(region: Region) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _metadata(region, region.workload_name),
    }


def render_promotion_request(region: Region) -> dict[str, Any]:
    """The ConfigMap through which the region's pods ask to be promoted (POST /admin/promote).
    Its data is theirs to write; the operator only reads it."""
    meta = _metadata(region, promotion_request_name(region.name))
    meta["labels"] = {**meta["labels"], "app.kubernetes.io/component": PROMOTION_REQUEST_COMPONENT}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta}


def render_role(region: Region) -> dict[str, Any]:
    """What the region's pods may do: read their group's Lease and write their own promotion
    request. Nothing else: not their MemoriaRegion (its image and Secret references are the
    namespace user's to choose, not the pod's), not Secrets, pods or Deployments."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _metadata(region, region.workload_name),
        "rules": [
            {
                "apiGroups": ["coordination.k8s.io"],
                "resources": ["leases"],
                "resourceNames": [region.lease_name],
                "verbs": ["get", "list", "watch"],
            },
            {
                "apiGroups": [""],
                "resources": ["configmaps"],
                "resourceNames": [promotion_request_name(region.name)],
                "verbs": ["get", "patch"],
            },
        ],
    }


def render_role_binding(region: Region) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _metadata(region, region.workload_name),
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": region.workload_name,
        },
        "subjects": [
            {"kind": "ServiceAccount", "name": region.workload_name, "namespace": region.namespace}
        ],
    }


def render_data_claim(region: Region) -> dict[str, Any] | None:
    """The embedded store's PersistentVolumeClaim, or None when the region has no such store.
    Owned by the region, so deleting the MemoriaRegion deletes its data (and only then)."""
    store = region.spec.store
    if not (store.embedded and store.persistence.enabled):
        return None
    spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": store.persistence.size}},
    }
    if store.persistence.storage_class_name:
        spec["storageClassName"] = store.persistence.storage_class_name
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _metadata(region, region.data_claim_name),
        "spec": spec,
    }


def render_all(
    region: Region, default_image: str, scheduler_on: bool = False
) -> list[dict[str, Any]]:
    """Everything the region owns, in the order it is applied."""
    claim = render_data_claim(region)
    return [
        *([claim] if claim else []),
        render_service_account(region),
        render_promotion_request(region),
        render_role(region),
        render_role_binding(region),
        render_service(region),
        render_deployment(region, default_image, scheduler_on),
    ]
