"""The operator's own election, purely: which step a replica takes on the Lease it finds, and the
Lease it then writes. No API server: the Lease is a dict, the clock a fixed moment."""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

import pytest

from memoria_operator.election import ElectionStep, election_lease, election_step
from memoria_operator.leadership.lease import micro_time

NOW = dt.datetime(2026, 3, 1, 8, 0, 0, tzinfo=dt.UTC)
STAMP = micro_time(NOW)
US = "operator-7d9f_1_a1b2c3"
OTHER = "operator-5c4e_1_d4e5f6"
DURATION = 10.0


def lease(
    holder: str | None, *, renewed_ago: float | None = 1.0, duration: int | None = 10
) -> dict[str, Any]:
    spec: dict[str, Any] = {"acquireTime": "2026-03-01T07:00:00.000000Z", "leaseTransitions": 3}
    if holder is not None:
        spec["holderIdentity"] = holder
    if renewed_ago is not None:
        spec["renewTime"] = micro_time(NOW - dt.timedelta(seconds=renewed_ago))
    if duration is not None:
        spec["leaseDurationSeconds"] = duration
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "memoria-operator", "namespace": "ops", "resourceVersion": "41"},
        "spec": spec,
    }


def step_for(current: dict[str, Any] | None, identity: str = US) -> ElectionStep:
    return election_step(current, identity=identity, now=NOW, duration=DURATION)


def write(current: dict[str, Any] | None, step: ElectionStep, **kw: Any) -> dict[str, Any]:
    params: dict[str, Any] = {
        "identity": US,
        "namespace": "ops",
        "name": "memoria-operator",
        "now": NOW,
        "duration": DURATION,
    }
    return election_lease(current, step, **{**params, **kw})


# == the step ==================================================================================


@pytest.mark.parametrize(
    ("current", "expected"),
    [
        (None, ElectionStep.CREATE),
        (lease(None), ElectionStep.TAKE),  # free: nobody holds it
        (lease(""), ElectionStep.TAKE),  # free: an emptied holder
        (lease(US), ElectionStep.RENEW),  # ours, fresh
        (lease(US, renewed_ago=60), ElectionStep.RENEW),  # ours, lapsed: nobody took it
        (lease(US, renewed_ago=None), ElectionStep.RENEW),
        (lease(OTHER), ElectionStep.STAND_BY),  # another replica's, fresh
        (lease(OTHER, renewed_ago=9.999), ElectionStep.STAND_BY),
        (lease(OTHER, renewed_ago=10), ElectionStep.TAKE),  # expired exactly now
        (lease(OTHER, renewed_ago=60), ElectionStep.TAKE),
        (lease(OTHER, renewed_ago=None), ElectionStep.TAKE),  # never renewed
        (lease(OTHER, renewed_ago=-3), ElectionStep.STAND_BY),  # its clock runs ahead of ours
    ],
    ids=[
        "no-lease",
        "free",
        "empty-holder",
        "ours-fresh",
        "ours-lapsed",
        "ours-never-renewed",
        "other-fresh",
        "other-almost-expired",
        "other-at-expiry",
        "other-expired",
        "other-never-renewed",
        "other-ahead",
    ],
)
def test_election_step(current: dict[str, Any] | None, expected: ElectionStep) -> None:
    assert step_for(current) is expected


def test_the_lease_duration_wins_over_ours() -> None:
    short = lease(OTHER, renewed_ago=3, duration=2)
    assert step_for(short) is ElectionStep.TAKE
    long = lease(OTHER, renewed_ago=30, duration=60)
    assert step_for(long) is ElectionStep.STAND_BY


@pytest.mark.parametrize(
    ("renewed_ago", "expected"),
    [(10.9, ElectionStep.STAND_BY), (11.0, ElectionStep.TAKE)],
)
def test_a_lease_without_a_duration_lasts_ours_rounded_up(
    renewed_ago: float, expected: ElectionStep
) -> None:
    current = lease(OTHER, renewed_ago=renewed_ago, duration=None)
    assert election_step(current, identity=US, now=NOW, duration=10.5) is expected


# == the Lease written =========================================================================


def test_create_holds_it_at_transition_zero() -> None:
    assert write(None, ElectionStep.CREATE) == {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "memoria-operator", "namespace": "ops"},
        "spec": {
            "holderIdentity": US,
            "leaseDurationSeconds": 10,
            "acquireTime": STAMP,
            "renewTime": STAMP,
            "leaseTransitions": 0,
        },
    }


def test_renew_keeps_acquire_time_and_transitions() -> None:
    current = lease(US, renewed_ago=4)
    written = write(current, ElectionStep.RENEW)
    assert written["spec"] == {
        **current["spec"],
        "renewTime": STAMP,
        "leaseDurationSeconds": 10,
    }
    assert written["metadata"] == current["metadata"]  # resourceVersion guards the write


def test_take_is_a_new_holder_and_one_more_transition() -> None:
    current = lease(OTHER, renewed_ago=60)
    written = write(current, ElectionStep.TAKE, duration=7.2)
    assert written["spec"] == {
        "holderIdentity": US,
        "leaseDurationSeconds": 8,
        "acquireTime": STAMP,
        "renewTime": STAMP,
        "leaseTransitions": 4,
    }
    assert written["metadata"]["resourceVersion"] == "41"


def test_standing_by_writes_nothing() -> None:
    with pytest.raises(ValueError, match="stand"):
        write(lease(OTHER), ElectionStep.STAND_BY)


def test_writing_leaves_the_lease_read_alone() -> None:
    current = lease(OTHER, renewed_ago=60)
    before = copy.deepcopy(current)
    write(current, ElectionStep.TAKE)
    assert current == before


def test_two_replicas_take_turns() -> None:
    """A creates and renews; B stands by while A's grant is fresh and takes it once A stops
    renewing for a whole duration; A, back, then stands by."""

    def act(current: dict[str, Any] | None, who: str, at: dt.datetime) -> dict[str, Any] | None:
        step = election_step(current, identity=who, now=at, duration=DURATION)
        if step is ElectionStep.STAND_BY:
            return current
        return election_lease(
            current,
            step,
            identity=who,
            namespace="ops",
            name="memoria-operator",
            now=at,
            duration=DURATION,
        )

    held = act(None, "a", NOW)
    assert held is not None
    held = act(held, "a", NOW + dt.timedelta(seconds=2))
    assert held is not None
    assert act(held, "b", NOW + dt.timedelta(seconds=11)) is held  # a renewed at +2 s
    taken = act(held, "b", NOW + dt.timedelta(seconds=12))
    assert taken is not None
    assert (taken["spec"]["holderIdentity"], taken["spec"]["leaseTransitions"]) == ("b", 1)
    assert act(taken, "a", NOW + dt.timedelta(seconds=13)) is taken
