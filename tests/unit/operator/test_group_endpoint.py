"""The group write endpoint's pure parts: the Service, who serves, and the label patches."""

from __future__ import annotations

from typing import Any

import pytest

from memoria_operator.leadership.endpoint import (
    SERVING_LABEL,
    label_patches,
    render_group_service,
    service_name,
    serving_key,
)
from memoria_operator.leadership.lease import LeaseFacts, TransitionReason


def test_group_service_selects_serving_pods_of_the_group_and_is_owned_by_all_regions() -> None:
    svc = render_group_service("ns", "payments", [("b", "uid-b"), ("a", "uid-a")])
    assert svc["metadata"]["name"] == service_name("payments") == "memoria-payments-rw"
    assert svc["spec"]["selector"] == {
        "app.kubernetes.io/name": "memoria",
        "memoria.arcafutura.io/group": "payments",
        SERVING_LABEL: "true",
    }
    owners = svc["metadata"]["ownerReferences"]
    assert [(o["name"], o["uid"]) for o in owners] == [("a", "uid-a"), ("b", "uid-b")]
    # no controller owner: deleting one region must not take the group's endpoint with it
    assert all("controller" not in o for o in owners)
    assert svc["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "memoria-operator"


@pytest.mark.parametrize(
    ("holder", "healthy", "handover", "expected"),
    [
        ("ns/a", True, None, "ns/a"),
        ("ns/a", False, None, None),  # a leader judged unhealthy leaves at once
        # a switchover's handover: the old leader takes writes until the Lease moves...
        (None, True, TransitionReason.SWITCHOVER, "ns/a"),
        (None, False, TransitionReason.SWITCHOVER, None),  # ...unless it is unhealthy
        (None, True, TransitionReason.FENCED, None),  # a fenced leader serves nobody
        (None, True, TransitionReason.RELEASED, None),
        ("", True, None, None),
        (None, False, None, None),
    ],
)
def test_serving_key(
    holder: str | None, healthy: bool, handover: TransitionReason | None, expected: str | None
) -> None:
    facts = LeaseFacts(
        holder=holder,
        expired=False,
        renewed=None,
        handover_to="ns/b" if handover else None,
        handover_from="ns/a" if handover else None,
        reason=handover,
    )
    assert serving_key(facts, lambda key: healthy) == expected


def _pod(name: str, serving: bool, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": {SERVING_LABEL: "true"} if serving else {}}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta}


def test_label_patches_add_and_remove_only_what_differs() -> None:
    pods = [_pod("p1", False), _pod("p2", True), _pod("p3", True, deleting=True)]
    assert label_patches(pods, serve=True) == [
        ("p1", {"metadata": {"labels": {SERVING_LABEL: "true"}}}),
        ("p3", {"metadata": {"labels": {SERVING_LABEL: None}}}),
    ]
    assert label_patches(pods, serve=False) == [
        ("p2", {"metadata": {"labels": {SERVING_LABEL: None}}}),
        ("p3", {"metadata": {"labels": {SERVING_LABEL: None}}}),
    ]
    assert label_patches([_pod("p4", True)], serve=True) == []
