"""What the leadership loop writes into each region's status and which Events it posts, purely."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from memoria.contract import (
    FENCED_ANNOTATION,
    HANDOVER_STARTED_ANNOTATION,
    REASON_ANNOTATION,
    lease_name,
)
from memoria_operator.health import Health
from memoria_operator.kube import EventType
from memoria_operator.leadership import (
    Ack,
    AckReason,
    Decision,
    DecisionKind,
    Event,
    GroupView,
    TransitionEvent,
    TransitionReason,
)
from memoria_operator.leadership.status import (
    lease_status,
    region_events,
    region_status,
    status_unchanged,
    transition_events,
)
from memoria_operator.model import Region

NOW = dt.datetime(2026, 3, 1, 8, 0, 0, tzinfo=dt.UTC)


def region(name: str, *, fenced: bool = False, status: dict[str, Any] | None = None) -> Region:
    return Region.from_body(
        {
            "metadata": {
                "namespace": "ns",
                "name": name,
                "generation": 3,
                "annotations": {FENCED_ANNOTATION: "true"} if fenced else {},
            },
            "spec": {"region": name, "sync": {"backend": "redis"}},
            "status": status or {},
        }
    )


def held_by(holder: str | None, **annotations: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"leaseTransitions": 6, "acquireTime": "2026-03-01T07:00:00.000000Z"}
    if holder:
        spec["holderIdentity"] = holder
    return {"metadata": {"annotations": annotations}, "spec": spec}


def view(*regions: Region, health: dict[str, Health] | None = None) -> GroupView:
    return GroupView(
        namespace="ns",
        group="g1",
        lease=None,
        regions={r.key: r for r in regions},
        health=health or {},
        now=NOW,
        mono=100.0,
        renew_interval=1.0,
    )


# == Events of a transition ====================================================================


def test_first_acquire_tells_only_the_new_holder() -> None:
    decision = Decision(
        kind=DecisionKind.ACQUIRE, holder="ns/a", reason=TransitionReason.BOOTSTRAP, message="m"
    )
    assert transition_events(None, decision, 1) == [
        Event(
            regarding="ns/a",
            type="Normal",
            reason=TransitionEvent.ACQUIRED,
            message="m; fencing token 1",
        )
    ]


@pytest.mark.parametrize(
    ("reason", "old_type"),
    [(TransitionReason.FAILOVER, "Warning"), (TransitionReason.SWITCHOVER, "Normal")],
)
def test_acquire_from_another_holder_tells_both(reason: TransitionReason, old_type: str) -> None:
    decision = Decision(kind=DecisionKind.ACQUIRE, holder="ns/b", reason=reason, message="m")
    events = transition_events(held_by("ns/a"), decision, 7)
    assert [(e.regarding, e.type, e.reason) for e in events] == [
        ("ns/b", "Normal", "LeadershipAcquired"),
        ("ns/a", old_type, "LeadershipLost"),
    ]
    assert events[1].message == "m"


@pytest.mark.parametrize(
    ("kind", "reason", "old_type"),
    [
        (DecisionKind.HANDOVER, TransitionReason.SWITCHOVER, "Normal"),
        (DecisionKind.HANDOVER, TransitionReason.FENCED, "Warning"),
        (DecisionKind.RELEASE, TransitionReason.RELEASED, "Warning"),
    ],
)
def test_emptying_the_lease_tells_the_old_holder_it_released(
    kind: DecisionKind, reason: TransitionReason, old_type: EventType
) -> None:
    decision = Decision(kind=kind, holder="ns/b", reason=reason, message="m")
    assert transition_events(held_by("ns/a"), decision, 7) == [
        Event(regarding="ns/a", type=old_type, reason=TransitionEvent.RELEASED, message="m")
    ]


def test_completing_a_handover_tells_only_the_new_holder() -> None:
    decision = Decision(
        kind=DecisionKind.ACQUIRE, holder="ns/b", reason=TransitionReason.SWITCHOVER, message="m"
    )
    events = transition_events(held_by(None), decision, 8)
    assert [e.regarding for e in events] == ["ns/b"]


# == status.leadership =========================================================================


def test_lease_status_without_a_lease() -> None:
    assert lease_status("g1", None) == {"lease": lease_name("g1"), "holder": "", "transitions": 0}


def test_lease_status_of_a_held_lease() -> None:
    lease = held_by("ns/a", **{REASON_ANNOTATION: "Failover"})
    assert lease_status("g1", lease) == {
        "lease": lease_name("g1"),
        "holder": "ns/a",
        "transitions": 6,
        "lastTransitionTime": "2026-03-01T07:00:00.000000Z",
        "lastTransitionReason": "Failover",
    }


def test_lease_status_during_a_handover_dates_from_its_start() -> None:
    lease = held_by(None, **{HANDOVER_STARTED_ANNOTATION: "2026-03-01T07:59:00.000000Z"})
    status = lease_status("g1", lease)
    assert status["holder"] == ""
    assert status["lastTransitionTime"] == "2026-03-01T07:59:00.000000Z"
    assert "lastTransitionReason" not in status


# == a region's status and Events ==============================================================


def test_region_status_of_the_holder() -> None:
    a = region("a")
    health = Health(True, "Deployment available", 1.0, "2026-03-01T07:00:00Z")
    leadership = lease_status("g1", held_by("ns/a"))
    wanted, cond = region_status(
        view(a, health={"ns/a": health}), Decision(kind=DecisionKind.KEEP), a, leadership
    )
    assert wanted == {
        "role": "leader",
        "fenced": False,
        "leadership": leadership,
        "health": {
            "healthy": True,
            "since": "2026-03-01T07:00:00Z",
            "message": "Deployment available",
        },
    }
    assert (cond["type"], cond["status"], cond["reason"], cond["observedGeneration"]) == (
        "LeadershipValid",
        "True",
        "LeadershipOK",
        3,
    )
    assert cond["message"] == f"ns/a holds {lease_name('g1')}"


def test_region_status_keeps_the_last_promotion_answered() -> None:
    b = region("b", fenced=True, status={"leadership": {"lastPromotion": "v1", "holder": "x"}})
    leadership = lease_status("g1", held_by("ns/a"))
    wanted, _ = region_status(view(b), Decision(kind=DecisionKind.KEEP), b, leadership)
    assert wanted["role"] == "standby"
    assert wanted["fenced"] is True
    assert wanted["leadership"] == {**leadership, "lastPromotion": "v1"}
    assert "health" not in wanted  # not probed yet


def test_region_status_records_this_steps_answer() -> None:
    b = region("b", status={"leadership": {"lastPromotion": "v1"}})
    ack = Ack(value="v2", reason=AckReason.SWITCHOVER_STARTED, message="started")
    decision = Decision(kind=DecisionKind.KEEP, acks={"ns/b": ack})
    wanted, _ = region_status(view(b), decision, b, lease_status("g1", None))
    assert wanted["leadership"]["lastPromotion"] == "v2"
    assert region_events(decision, "ns/b", conflict_reported=False) == [
        Event(regarding="ns/b", type="Normal", reason="SwitchoverStarted", message="started")
    ]


def test_a_conflict_is_a_false_condition_and_one_event() -> None:
    a = region("a")
    decision = Decision(kind=DecisionKind.KEEP, conflict=["ns/a", "ns/z"], message="2 ask")
    _, cond = region_status(view(a), decision, a, lease_status("g1", None))
    assert (cond["status"], cond["reason"], cond["message"]) == ("False", "LeaderConflict", "2 ask")
    assert region_events(decision, "ns/a", conflict_reported=False) == [
        Event(regarding="ns/a", type="Warning", reason="LeaderConflict", message="2 ask")
    ]
    assert region_events(decision, "ns/a", conflict_reported=True) == []


def test_status_unchanged_ignores_only_the_condition_time() -> None:
    a = region("a")
    wanted, cond = region_status(
        view(a), Decision(kind=DecisionKind.KEEP), a, lease_status("g1", held_by("ns/a"))
    )
    written = {**wanted, "conditions": [{**cond, "lastTransitionTime": "long ago"}]}
    assert status_unchanged(written, wanted, cond)
    assert not status_unchanged({**written, "role": "standby"}, wanted, cond)
    assert not status_unchanged({**wanted}, wanted, cond)  # no condition yet
    other = {**cond, "message": "nobody holds it"}
    assert not status_unchanged({**wanted, "conditions": [other]}, wanted, cond)


def test_heartbeat_is_due_when_missing_or_older_than_the_resync_interval() -> None:
    from memoria_operator.leadership.manager import heartbeat_due

    now = dt.datetime(2026, 11, 29, 12, 0, 0, tzinfo=dt.UTC)
    assert heartbeat_due({}, now, 30)
    assert heartbeat_due({"observedTime": "garbage"}, now, 30)
    assert heartbeat_due({"observedTime": "2026-11-29T11:59:30.000000Z"}, now, 30)
    assert not heartbeat_due({"observedTime": "2026-11-29T11:59:45.000000Z"}, now, 30)
