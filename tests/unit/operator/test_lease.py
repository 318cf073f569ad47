"""The Lease helpers: times, expiry, what a scheduler Lease says, and the next Lease, purely."""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

import pytest

from memoria.contract import (
    HANDOVER_ANNOTATION,
    HANDOVER_FROM_ANNOTATION,
    HANDOVER_STARTED_ANNOTATION,
    REASON_ANNOTATION,
    lease_name,
)
from memoria_operator.leadership import Decision, DecisionKind, TransitionReason, next_lease
from memoria_operator.leadership.lease import (
    grant_expired,
    granted_spec,
    micro_time,
    parse_time,
    read_lease,
    renewed_spec,
)

NOW = dt.datetime(2026, 3, 1, 8, 0, 0, tzinfo=dt.UTC)
STAMP = "2026-03-01T08:00:00.000000Z"
EARLIER = "2026-03-01T07:59:58.000000Z"  # 2 s before NOW
HANDOVER = {
    HANDOVER_ANNOTATION: "ns/b",
    HANDOVER_FROM_ANNOTATION: "ns/a",
    HANDOVER_STARTED_ANNOTATION: EARLIER,
}


def ago(seconds: float) -> str:
    return micro_time(NOW - dt.timedelta(seconds=seconds))


def held(
    holder: str | None = "ns/a", *, annotations: dict[str, str] | None = None
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "leaseDurationSeconds": 10,
        "acquireTime": "2026-03-01T07:00:00.000000Z",
        "renewTime": EARLIER,
        "leaseTransitions": 4,
    }
    if holder is not None:
        spec["holderIdentity"] = holder
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": lease_name("g1"),
            "namespace": "ns",
            "resourceVersion": "812",
            "labels": {"app.kubernetes.io/managed-by": "memoria-operator"},
            "annotations": dict(annotations or {}),
        },
        "spec": spec,
    }


def step(current: dict[str, Any] | None, decision: Decision) -> dict[str, Any]:
    return next_lease(current, decision, namespace="ns", group="g1", now=NOW, duration=2.5)


# == times and expiry ==========================================================================


def test_micro_time_is_utc_with_microseconds() -> None:
    paris = dt.timezone(dt.timedelta(hours=1))
    assert micro_time(dt.datetime(2026, 3, 1, 9, 0, 0, 5, tzinfo=paris)) == (
        "2026-03-01T08:00:00.000005Z"
    )
    assert parse_time(micro_time(NOW)) == NOW
    assert parse_time("2026-03-01T08:00:00Z") == NOW
    assert parse_time(None) is None
    assert parse_time("") is None


@pytest.mark.parametrize(
    ("spec", "expired"),
    [
        ({"renewTime": ago(9.999), "leaseDurationSeconds": 10}, False),
        ({"renewTime": ago(10), "leaseDurationSeconds": 10}, True),  # the boundary is expiry
        ({"renewTime": ago(60), "leaseDurationSeconds": 10}, True),
        ({"leaseDurationSeconds": 10}, True),  # never renewed
        ({"renewTime": "", "leaseDurationSeconds": 10}, True),
        ({"renewTime": ago(0)}, True),  # no duration and no default: lasts no time at all
        ({"renewTime": ago(-5), "leaseDurationSeconds": 1}, False),  # renewed "in the future"
    ],
)
def test_grant_expired(spec: dict[str, Any], expired: bool) -> None:
    assert grant_expired(spec, NOW) is expired


def test_grant_expired_default_duration_stands_in_for_a_missing_one() -> None:
    assert grant_expired({"renewTime": ago(2)}, NOW, default_duration=3) is False
    assert grant_expired({"renewTime": ago(3)}, NOW, default_duration=3) is True
    # a duration the Lease states wins over the default
    assert grant_expired({"renewTime": ago(2), "leaseDurationSeconds": 1}, NOW, default_duration=9)


# == shared spec changes =======================================================================


def test_renewed_spec_moves_only_the_renew_time_and_duration() -> None:
    spec = held()["spec"]
    assert renewed_spec(spec, now=NOW, duration=2.5) == {
        **spec,
        "renewTime": STAMP,
        "leaseDurationSeconds": 3,  # whole seconds, rounded up: never shorter than configured
    }


def test_granted_spec_is_a_new_holder_and_one_more_transition() -> None:
    assert granted_spec(held()["spec"], holder="ns/b", now=NOW, duration=10) == {
        "holderIdentity": "ns/b",
        "leaseDurationSeconds": 10,
        "acquireTime": STAMP,
        "renewTime": STAMP,
        "leaseTransitions": 5,
    }
    assert granted_spec({}, holder="x", now=NOW, duration=1)["leaseTransitions"] == 1


# == reading a scheduler Lease =================================================================


def test_read_lease_of_nothing() -> None:
    facts = read_lease(None, NOW)
    assert (facts.holder, facts.expired, facts.renewed, facts.reason) == (None, True, None, None)
    assert facts.in_handover is False


def test_read_lease_in_handover() -> None:
    facts = read_lease(held(None, annotations={**HANDOVER, REASON_ANNOTATION: "Fenced"}), NOW)
    assert facts.holder is None
    assert facts.expired is False
    assert facts.renewed == parse_time(EARLIER)
    assert (facts.handover_to, facts.handover_from) == ("ns/b", "ns/a")
    assert facts.reason is TransitionReason.FENCED
    assert facts.in_handover is True


def test_a_held_lease_is_never_in_handover() -> None:
    assert read_lease(held("ns/a", annotations=HANDOVER), NOW).in_handover is False


def test_empty_holder_reads_as_nobody() -> None:
    assert read_lease(held(""), NOW).holder is None


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("Failover", TransitionReason.FAILOVER),
        ("Bootstrap", TransitionReason.BOOTSTRAP),
        ("", None),
        (None, None),
        ("failover", None),  # not one this operator writes
    ],
)
def test_recorded_reason(raw: str | None, reason: TransitionReason | None) -> None:
    assert TransitionReason.recorded(raw) is reason


# == the next scheduler Lease ==================================================================


def test_the_first_lease_is_created_for_the_bootstrap_leader() -> None:
    lease = step(
        None,
        Decision(kind=DecisionKind.ACQUIRE, holder="ns/a", reason=TransitionReason.BOOTSTRAP),
    )
    assert lease == {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": lease_name("g1"),
            "namespace": "ns",
            "labels": {"app.kubernetes.io/managed-by": "memoria-operator"},
            "annotations": {REASON_ANNOTATION: "Bootstrap"},
        },
        "spec": {
            "holderIdentity": "ns/a",
            "acquireTime": STAMP,
            "renewTime": STAMP,
            "leaseDurationSeconds": 3,
            "leaseTransitions": 1,  # the first fencing token
        },
    }


def test_renew_moves_renew_time_and_nothing_else() -> None:
    current = held(annotations={REASON_ANNOTATION: "Failover", **HANDOVER})
    lease = step(current, Decision(kind=DecisionKind.RENEW))
    assert lease["spec"] == {**current["spec"], "renewTime": STAMP, "leaseDurationSeconds": 3}
    assert lease["metadata"] == current["metadata"]  # resourceVersion guards the write


def test_acquire_takes_a_new_token_and_clears_a_handover() -> None:
    current = held(None, annotations={**HANDOVER, REASON_ANNOTATION: "Switchover"})
    lease = step(
        current,
        Decision(kind=DecisionKind.ACQUIRE, holder="ns/b", reason=TransitionReason.SWITCHOVER),
    )
    assert lease["spec"] == {
        "holderIdentity": "ns/b",
        "acquireTime": STAMP,
        "renewTime": STAMP,
        "leaseDurationSeconds": 3,
        "leaseTransitions": 5,
    }
    assert lease["metadata"]["annotations"] == {REASON_ANNOTATION: "Switchover"}
    assert lease["metadata"]["resourceVersion"] == "812"


def test_release_empties_the_holder_but_keeps_its_renew_time() -> None:
    current = held("ns/gone", annotations=HANDOVER)
    lease = step(
        current,
        Decision(kind=DecisionKind.RELEASE, reason=TransitionReason.RELEASED, message="m"),
    )
    assert "holderIdentity" not in lease["spec"]
    # renewTime is when the old holder's grant runs out, as that holder sees it
    assert lease["spec"]["renewTime"] == EARLIER
    assert lease["spec"]["acquireTime"] == current["spec"]["acquireTime"]
    assert lease["spec"]["leaseTransitions"] == 5
    assert lease["metadata"]["annotations"] == {REASON_ANNOTATION: "Released"}


def test_handover_notes_target_old_holder_and_start() -> None:
    lease = step(
        held("ns/a", annotations={REASON_ANNOTATION: "Bootstrap"}),
        Decision(kind=DecisionKind.HANDOVER, holder="ns/b", reason=TransitionReason.FENCED),
    )
    assert "holderIdentity" not in lease["spec"]
    assert lease["spec"]["renewTime"] == EARLIER
    assert lease["spec"]["leaseTransitions"] == 5
    assert lease["metadata"]["annotations"] == {
        REASON_ANNOTATION: "Fenced",
        HANDOVER_ANNOTATION: "ns/b",
        HANDOVER_FROM_ANNOTATION: "ns/a",
        HANDOVER_STARTED_ANNOTATION: STAMP,
    }
    # and the Lease it wrote reads back as a handover in progress
    facts = read_lease(lease, NOW)
    assert facts.in_handover
    assert (facts.handover_to, facts.handover_from, facts.reason) == (
        "ns/b",
        "ns/a",
        TransitionReason.FENCED,
    )


def test_keep_writes_no_lease() -> None:
    with pytest.raises(ValueError, match="keep"):
        step(held(), Decision(kind=DecisionKind.KEEP))


@pytest.mark.parametrize(
    "decision",
    [
        Decision(kind=DecisionKind.RENEW),
        Decision(kind=DecisionKind.ACQUIRE, holder="ns/b", reason=TransitionReason.FAILOVER),
        Decision(kind=DecisionKind.RELEASE, reason=TransitionReason.RELEASED),
        Decision(kind=DecisionKind.HANDOVER, holder="ns/b", reason=TransitionReason.SWITCHOVER),
    ],
    ids=lambda d: str(d.kind),
)
def test_next_lease_leaves_the_current_one_alone(decision: Decision) -> None:
    current = held(annotations=HANDOVER)
    before = copy.deepcopy(current)
    step(current, decision)
    assert current == before


def test_decision_is_keyword_only() -> None:
    with pytest.raises(TypeError):
        Decision("acquire", "ns/a")  # type: ignore[call-arg, arg-type]
