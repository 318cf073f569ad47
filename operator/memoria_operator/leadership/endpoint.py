"""The group's write endpoint: one Service per group whose endpoints are the leading region's pods.

Like CloudNativePG's ``-rw`` Service, ``memoria-<group>-rw`` always points at the primary. It
selects pods by a label the operator moves, ``memoria.arcafutura.io/serving=true``, so a
switchover or a failover re-routes traffic without a restart or a rollout: the label is on the
pods, not in the Deployment's template, and the ReplicaSet does not select on it.

Which region serves is decided from the Lease as just written: its holder while that holder is
healthy; nobody during a handover (the old leader leaves before the new one joins) and nobody
while the holder is judged unhealthy (a dead leader leaves at once, before the failover bound).
When the label moves, it is taken off first and put on after, so two regions never serve at once.
"""

from __future__ import annotations

from typing import Any

from ..config import API_VERSION, GROUP, KIND
from ..render import PORT, selector

SERVING_LABEL = f"{GROUP}/serving"
GROUP_LABEL = f"{GROUP}/group"


def service_name(group: str) -> str:
    return f"memoria-{group}-rw"


def render_group_service(
    namespace: str, group: str, owners: list[tuple[str, str]]
) -> dict[str, Any]:
    """The group's Service, owned by every region of the group (``owners``: name, uid), so it
    goes when the last of them goes and no single region's deletion takes it away."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": service_name(group),
            "namespace": namespace,
            "labels": {
                "app.kubernetes.io/name": "memoria",
                "app.kubernetes.io/component": "group-endpoint",
                "app.kubernetes.io/managed-by": "memoria-operator",
                GROUP_LABEL: group,
            },
            "ownerReferences": [
                {"apiVersion": API_VERSION, "kind": KIND, "name": name, "uid": uid}
                for name, uid in sorted(owners)
            ],
        },
        "spec": {
            "type": "ClusterIP",
            "selector": {
                "app.kubernetes.io/name": "memoria",
                GROUP_LABEL: group,
                SERVING_LABEL: "true",
            },
            "ports": [{"name": "http", "port": PORT, "targetPort": "http", "protocol": "TCP"}],
            # a client that sees a connection close retries on the new leader, not the old one
            "publishNotReadyAddresses": False,
        },
    }


def serving_key(holder: str | None, healthy: bool, in_handover: bool) -> str | None:
    """The region (``namespace/name``) whose pods should carry the serving label, or None."""
    if not holder or in_handover or not healthy:
        return None
    return holder


def label_patches(pods: list[dict[str, Any]], *, serve: bool) -> list[tuple[str, dict[str, Any]]]:
    """(pod name, merge patch) for each pod whose serving label is not what it should be. A pod
    being deleted is taken out but never put in."""
    patches = []
    for pod in pods:
        meta = pod["metadata"]
        has = (meta.get("labels") or {}).get(SERVING_LABEL) == "true"
        want = serve and not meta.get("deletionTimestamp")
        if has != want:
            value = "true" if want else None  # None removes the label (merge patch)
            patches.append((meta["name"], {"metadata": {"labels": {SERVING_LABEL: value}}}))
    return patches


def pod_selector(region_selector: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(region_selector.items()))


__all__ = [
    "GROUP_LABEL",
    "SERVING_LABEL",
    "label_patches",
    "pod_selector",
    "render_group_service",
    "selector",
    "service_name",
    "serving_key",
]
