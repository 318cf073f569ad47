"""The group's write endpoint: one Service per group whose endpoints are the leading region's pods.

Like CloudNativePG's ``-rw`` Service, ``memoria-<group>-rw`` always points at the primary. It
selects pods by a label the operator moves, ``memoria.arcafutura.io/serving=true``, so a
switchover or a failover re-routes traffic without a restart or a rollout: the label is on the
pods, not in the Deployment's template, and the ReplicaSet does not select on it.

Which region serves is decided from the Lease as just written: its holder while that holder is
healthy, and nobody while the holder is judged unhealthy (a dead leader leaves at once, before
the failover bound). During a switchover's handover the old leader keeps serving while it is
healthy: writes are not the scheduler's business (any region takes them and they replicate), so
there is no reason to refuse clients while the old scheduler stops. The label then moves in the
tick that moves the Lease, taken off the old pods first and put on the new ones right after, so
two regions never serve at once and the gap between them is two pod patches, not a handover.
A handover for any other reason (the holder was fenced, or its scheduler switched off) serves
nobody until the new holder has the Lease.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..config import API_VERSION, GROUP, KIND
from ..render import PORT, selector
from .lease import LeaseFacts, TransitionReason

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


def serving_key(facts: LeaseFacts, healthy: Callable[[str], bool]) -> str | None:
    """The region (``namespace/name``) whose pods should carry the serving label, or None."""
    if facts.in_handover:
        old = facts.handover_from
        if facts.reason is TransitionReason.SWITCHOVER and old and healthy(old):
            return old
        return None
    if not facts.holder or not healthy(facts.holder):
        return None
    return facts.holder


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
