"""The pure leadership step: ``decide(view) -> Decision`` for one group.

Every view is built by hand with a fixed wall clock (``NOW``) and a fixed monotonic clock
(``MONO``), so each case states exactly how old the Lease grant is and how long a region has
been unhealthy.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from typing import Any

import pytest

from memoria_operator.health import Health
from memoria_operator.leadership import (
    HANDOVER_FROM,
    HANDOVER_STARTED,
    Decision,
    GroupView,
    decide,
    micro_time,
    parse_time,
)
from memoria_operator.model import Region

NS = "prod"
NOW = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
MONO = 5000.0
DURATION = 3  # leaseDurationSeconds
RENEW = 1.0  # renew interval: renew when the grant is >= 0.9 s old

PROMOTE = "memoria.arcafutura.io/promote"
FENCED = "memoria.arcafutura.io/fenced"
HANDOVER_TO = "memoria.arcafutura.io/handover-to"
REASON = "memoria.arcafutura.io/transition-reason"


def key(name: str) -> str:
    return f"{NS}/{name}"


def make_region(
    name: str,
    *,
    role: str = "standby",
    priority: int = 100,
    fenced: bool = False,
    scheduler: bool = True,
    eligible: bool = True,
    unhealthy_after: int = 10,
    promote: str | None = None,
    last_promotion: str | None = None,
) -> Region:
    annotations: dict[str, str] = {}
    if fenced:
        annotations[FENCED] = "true"
    if promote is not None:
        annotations[PROMOTE] = promote
    status: dict[str, Any] = {}
    if last_promotion is not None:
        status["leadership"] = {"lastPromotion": last_promotion}
    return Region.from_body(
        {
            "metadata": {
                "namespace": NS,
                "name": name,
                "uid": f"uid-{name}",
                "generation": 1,
                "annotations": annotations,
            },
            "spec": {
                "region": name,
                "role": role,
                "group": "default",
                "priority": priority,
                "sync": {"backend": "redis", "connectionUrl": "redis://r:6379/0"},
                "scheduler": {"enabled": scheduler},
                "failover": {"eligible": eligible, "unhealthyAfterSeconds": unhealthy_after},
            },
            "status": status,
        }
    )


def healthy(*, leading: bool | None = None) -> Health:
    return Health(True, "Deployment available", MONO - 100.0, "2026-01-01T11:58:20Z", leading)


def unhealthy(for_seconds: float, *, leading: bool | None = None) -> Health:
    """Unhealthy since its last good probe, ``for_seconds`` ago."""
    since = MONO - for_seconds
    return Health(
        False, "http://x/healthz unreachable", since, "2026-01-01T11:59:00Z", leading, since
    )


def lease(
    holder: str | None,
    *,
    renewed_ago: float | None = 0.5,
    duration: int = DURATION,
    annotations: dict[str, str] | None = None,
    transitions: int = 4,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"leaseDurationSeconds": duration, "leaseTransitions": transitions}
    if holder is not None:
        spec["holderIdentity"] = holder
    if renewed_ago is not None:
        spec["renewTime"] = micro_time(NOW - dt.timedelta(seconds=renewed_ago))
    return {
        "metadata": {
            "name": "memoria-scheduler-default",
            "namespace": NS,
            "annotations": annotations or {},
        },
        "spec": spec,
    }


def handover_lease(
    to: str, frm: str, *, renewed_ago: float = 0.5, reason: str | None = "Switchover"
) -> dict[str, Any]:
    annotations = {HANDOVER_TO: key(to), HANDOVER_FROM: key(frm), HANDOVER_STARTED: micro_time(NOW)}
    if reason is not None:
        annotations[REASON] = reason
    return lease(None, renewed_ago=renewed_ago, annotations=annotations)


def view(
    regions: list[Region],
    health: dict[str, Health],
    lease_: dict[str, Any] | None,
    *,
    now: dt.datetime = NOW,
    mono: float = MONO,
    renew_interval: float = RENEW,
) -> GroupView:
    return GroupView(
        namespace=NS,
        group="default",
        lease=lease_,
        regions={r.key: r for r in regions},
        health={key(n): h for n, h in health.items()},
        now=now,
        mono=mono,
        renew_interval=renew_interval,
    )


def assert_keep(d: Decision) -> None:
    assert d.kind == "keep"
    assert d.holder is None


# == bootstrap: no Lease yet ===================================================================


def test_bootstrap_leader_acquires_once_healthy() -> None:
    regions = [make_region("a", role="leader"), make_region("b", priority=900)]
    d = decide(view(regions, {"a": healthy(), "b": healthy()}, None))
    assert (d.kind, d.holder, d.reason) == ("acquire", key("a"), "Bootstrap")
    assert d.conflict == []
    assert "prod/a leads from the start" in d.message


@pytest.mark.parametrize(
    ("leader", "health"),
    [
        (make_region("a", role="leader"), unhealthy(60)),
        (make_region("a", role="leader"), None),  # not probed yet
        (make_region("a", role="leader", fenced=True), healthy()),
        (make_region("a", role="leader", scheduler=False), healthy()),
    ],
    ids=["unhealthy", "not-probed", "fenced", "scheduler-disabled"],
)
def test_bootstrap_waits_for_a_leader_that_may_lead_and_is_healthy(
    leader: Region, health: Health | None
) -> None:
    states = {"b": healthy()}
    if health is not None:
        states["a"] = health
    d = decide(view([leader, make_region("b", priority=900)], states, None))
    assert_keep(d)
    assert d.message == "waiting for the bootstrap leader prod/a to be healthy and allowed to lead"


def test_bootstrap_without_a_leader_elects_nobody() -> None:
    regions = [make_region("a", priority=500), make_region("b")]
    d = decide(view(regions, {"a": healthy(), "b": healthy()}, None))
    assert_keep(d)


def test_two_leaders_conflict_and_nobody_gets_the_lease() -> None:
    regions = [make_region("z", role="leader"), make_region("a", role="leader"), make_region("s")]
    d = decide(view(regions, {"z": healthy(), "a": healthy(), "s": healthy()}, None))
    assert_keep(d)
    assert d.conflict == [key("a"), key("z")]
    assert "2 regions ask to lead (prod/a, prod/z)" in d.message
    assert "nobody gets the Lease" in d.message


def test_conflict_counts_leaders_that_could_not_lead_anyway() -> None:
    regions = [make_region("a", role="leader"), make_region("b", role="leader", fenced=True)]
    d = decide(view(regions, {"a": healthy()}, None))
    assert_keep(d)
    assert d.conflict == [key("a"), key("b")]


def test_existing_lease_is_not_a_bootstrap() -> None:
    # a Lease exists with nobody holding it: the role field no longer matters
    regions = [make_region("a", role="leader", priority=10), make_region("b", priority=50)]
    d = decide(view(regions, {"a": healthy(), "b": healthy()}, lease(None, renewed_ago=60)))
    assert (d.kind, d.holder, d.reason) == ("acquire", key("b"), "Failover")


# == the Lease exists but nobody holds it =====================================================


def test_unheld_lease_goes_to_the_highest_priority() -> None:
    regions = [
        make_region("a", priority=100),
        make_region("b", priority=300),
        make_region("c", priority=200),
    ]
    states = {n: healthy() for n in "abc"}
    d = decide(view(regions, states, lease(None, renewed_ago=60)))
    assert (d.kind, d.holder, d.reason) == ("acquire", key("b"), "Failover")
    assert d.message == "nobody led; prod/b is the best healthy standby"


def test_priority_ties_break_by_name() -> None:
    regions = [
        make_region("m", priority=200),
        make_region("c", priority=200),
        make_region("x", priority=200),
    ]
    d = decide(view(regions, {n: healthy() for n in "mcx"}, lease(None, renewed_ago=60)))
    assert d.holder == key("c")


@pytest.mark.parametrize(
    ("best", "best_health"),
    [
        (make_region("best", priority=999, fenced=True), healthy()),
        (make_region("best", priority=999, scheduler=False), healthy()),
        (make_region("best", priority=999, eligible=False), healthy()),
        (make_region("best", priority=999), unhealthy(1)),
        (make_region("best", priority=999), None),
    ],
    ids=["fenced", "scheduler-disabled", "failover-ineligible", "unhealthy", "not-probed"],
)
def test_unheld_lease_skips_regions_that_may_not_take_over(
    best: Region, best_health: Health | None
) -> None:
    states = {"ok": healthy()}
    if best_health is not None:
        states["best"] = best_health
    d = decide(view([best, make_region("ok", priority=1)], states, lease(None, renewed_ago=60)))
    assert (d.kind, d.holder) == ("acquire", key("ok"))


def test_unheld_lease_without_candidates_keeps() -> None:
    regions = [make_region("a", fenced=True), make_region("b", eligible=False), make_region("c")]
    states = {"a": healthy(), "b": healthy(), "c": unhealthy(100)}
    d = decide(view(regions, states, lease(None, renewed_ago=60)))
    assert_keep(d)
    assert d.message == "nobody led; no healthy eligible region to lead"


def test_empty_group_with_unheld_lease_keeps() -> None:
    assert_keep(decide(view([], {}, lease(None))))


def test_handover_annotation_with_a_holder_is_not_a_handover() -> None:
    # in_handover needs an empty holder: a leftover annotation on a held Lease is ignored
    annotations = {HANDOVER_TO: key("b"), HANDOVER_FROM: key("a")}
    regions = [make_region("a"), make_region("b")]
    d = decide(
        view(
            regions,
            {"a": healthy(), "b": healthy()},
            lease(key("a"), renewed_ago=2, annotations=annotations),
        )
    )
    assert d.kind == "renew"


# == a healthy holder: renew ===================================================================


@pytest.mark.parametrize(
    ("renewed_ago", "kind"),
    [
        (0.0, "keep"),
        (0.5, "keep"),
        (0.899, "keep"),
        (0.9, "renew"),
        (1.0, "renew"),
        (2.5, "renew"),
        (10.0, "renew"),  # grant already expired: a healthy holder renews anyway
    ],
)
def test_healthy_holder_renews_when_due(renewed_ago: float, kind: str) -> None:
    regions = [make_region("a"), make_region("b", priority=999)]
    d = decide(
        view(regions, {"a": healthy(), "b": healthy()}, lease(key("a"), renewed_ago=renewed_ago))
    )
    assert d.kind == kind
    assert d.holder is None
    assert d.reason == ""


def test_renew_due_scales_with_the_renew_interval() -> None:
    regions = [make_region("a")]
    lease_ = lease(key("a"), renewed_ago=1.5)
    assert decide(view(regions, {"a": healthy()}, lease_, renew_interval=2.0)).kind == "keep"
    assert decide(view(regions, {"a": healthy()}, lease_, renew_interval=1.6)).kind == "renew"


def test_healthy_holder_without_renew_time_renews() -> None:
    d = decide(view([make_region("a")], {"a": healthy()}, lease(key("a"), renewed_ago=None)))
    assert d.kind == "renew"


def test_healthy_holder_is_never_failed_over_even_if_a_better_region_exists() -> None:
    regions = [make_region("a", priority=1), make_region("b", priority=1000)]
    d = decide(view(regions, {"a": healthy(), "b": healthy()}, lease(key("a"), renewed_ago=100)))
    assert d.kind == "renew"


# == an unhealthy holder: failover =============================================================


def test_unhealthy_holder_before_its_bound_keeps() -> None:
    regions = [make_region("a", unhealthy_after=10), make_region("b")]
    d = decide(view(regions, {"a": unhealthy(5), "b": healthy()}, lease(key("a"), renewed_ago=60)))
    assert_keep(d)
    assert d.message == "prod/a unhealthy for 5.0s"
    assert d.unhealthy_for is None


def test_unhealthy_holder_at_its_bound_with_an_expired_grant_fails_over() -> None:
    regions = [make_region("a", unhealthy_after=10), make_region("b")]
    d = decide(view(regions, {"a": unhealthy(10), "b": healthy()}, lease(key("a"), renewed_ago=60)))
    assert (d.kind, d.holder, d.reason) == ("acquire", key("b"), "Failover")
    assert d.unhealthy_for == pytest.approx(10.0)
    assert d.message == (
        "prod/a unhealthy for 10.0s (http://x/healthz unreachable); prod/b takes over"
    )


def test_unhealthy_holder_past_its_bound_waits_for_the_grant_to_expire() -> None:
    regions = [make_region("a", unhealthy_after=10), make_region("b")]
    states = {"a": unhealthy(30), "b": healthy()}
    # renewed 2.9 s ago, lease lasts 3 s: still valid for the old holder
    d = decide(view(regions, states, lease(key("a"), renewed_ago=2.9)))
    assert_keep(d)
    assert d.message == "prod/a unhealthy for 30.0s"
    # exactly at renewTime + duration the grant is over
    d = decide(view(regions, states, lease(key("a"), renewed_ago=3.0)))
    assert (d.kind, d.holder) == ("acquire", key("b"))


def test_grant_expiry_uses_the_lease_duration() -> None:
    regions = [make_region("a", unhealthy_after=1), make_region("b")]
    states = {"a": unhealthy(30), "b": healthy()}
    assert decide(view(regions, states, lease(key("a"), renewed_ago=9, duration=10))).kind == "keep"
    assert (
        decide(view(regions, states, lease(key("a"), renewed_ago=10, duration=10))).kind
        == "acquire"
    )


def test_missing_renew_time_counts_as_expired() -> None:
    regions = [make_region("a", unhealthy_after=1), make_region("b")]
    d = decide(
        view(regions, {"a": unhealthy(5), "b": healthy()}, lease(key("a"), renewed_ago=None))
    )
    assert (d.kind, d.holder) == ("acquire", key("b"))


def test_failover_bound_is_the_holders_not_the_standbys() -> None:
    regions = [make_region("a", unhealthy_after=60), make_region("b", unhealthy_after=1)]
    d = decide(view(regions, {"a": unhealthy(30), "b": healthy()}, lease(key("a"), renewed_ago=60)))
    assert_keep(d)


def test_unprobed_holder_counts_as_unhealthy_for_zero_seconds() -> None:
    regions = [make_region("a", unhealthy_after=1), make_region("b")]
    d = decide(view(regions, {"b": healthy()}, lease(key("a"), renewed_ago=60)))
    assert_keep(d)
    assert d.message == "prod/a unhealthy for 0.0s"


def test_failover_picks_highest_priority_then_name() -> None:
    regions = [
        make_region("a", priority=1000, unhealthy_after=1),  # the holder
        make_region("d", priority=200),
        make_region("c", priority=300),
        make_region("b", priority=300),
        make_region("e", priority=100),
    ]
    states = {"a": unhealthy(5), **{n: healthy() for n in "bcde"}}
    d = decide(view(regions, states, lease(key("a"), renewed_ago=60)))
    assert (d.kind, d.holder, d.reason) == ("acquire", key("b"), "Failover")


@pytest.mark.parametrize(
    ("best", "best_health"),
    [
        (make_region("best", priority=999, fenced=True), healthy()),
        (make_region("best", priority=999, scheduler=False), healthy()),
        (make_region("best", priority=999, eligible=False), healthy()),
        (make_region("best", priority=999), unhealthy(1)),
        (make_region("best", priority=999), None),
    ],
    ids=["fenced", "scheduler-disabled", "failover-ineligible", "unhealthy", "not-probed"],
)
def test_failover_excludes_regions_that_may_not_take_over(
    best: Region, best_health: Health | None
) -> None:
    regions = [make_region("a", unhealthy_after=1), best, make_region("ok", priority=1)]
    states = {"a": unhealthy(5), "ok": healthy()}
    if best_health is not None:
        states["best"] = best_health
    d = decide(view(regions, states, lease(key("a"), renewed_ago=60)))
    assert (d.kind, d.holder) == ("acquire", key("ok"))


def test_failover_without_an_eligible_standby_keeps() -> None:
    regions = [make_region("a", unhealthy_after=1), make_region("b", eligible=False)]
    d = decide(view(regions, {"a": unhealthy(5), "b": healthy()}, lease(key("a"), renewed_ago=60)))
    assert_keep(d)
    assert d.message == "prod/a is unhealthy and no standby is eligible"


def test_failover_never_chooses_the_unhealthy_holder_itself() -> None:
    # the only region is the holder: nothing to fail over to
    d = decide(
        view(
            [make_region("a", unhealthy_after=1)],
            {"a": unhealthy(5)},
            lease(key("a"), renewed_ago=60),
        )
    )
    assert_keep(d)


# == the holder was deleted ====================================================================


def test_deleted_holder_is_replaced_by_the_best_candidate() -> None:
    regions = [make_region("b", priority=100), make_region("c", priority=200)]
    # the grant is still valid: a deleted region's grant is not waited for
    d = decide(view(regions, {"b": healthy(), "c": healthy()}, lease(key("gone"), renewed_ago=0.1)))
    assert (d.kind, d.holder, d.reason) == ("acquire", key("c"), "Failover")
    assert d.message == "holder prod/gone no longer exists; prod/c is the best healthy standby"


def test_deleted_holder_candidates_need_failover_eligibility() -> None:
    regions = [make_region("b", priority=900, eligible=False), make_region("c", priority=1)]
    d = decide(view(regions, {"b": healthy(), "c": healthy()}, lease(key("gone"))))
    assert d.holder == key("c")


def test_deleted_holder_without_candidates_releases() -> None:
    regions = [make_region("b", eligible=False), make_region("c", fenced=True)]
    d = decide(view(regions, {"b": healthy(), "c": healthy()}, lease(key("gone"))))
    assert (d.kind, d.holder, d.reason) == ("release", None, "Released")
    assert d.message == "holder prod/gone no longer exists; no healthy eligible region to lead"


# == a fenced holder: handover =================================================================


def test_fenced_holder_hands_over_to_the_best_region() -> None:
    regions = [
        make_region("a", fenced=True, priority=1000),
        make_region("b", priority=100),
        make_region("c", priority=500),
    ]
    states = {n: healthy() for n in "abc"}
    d = decide(view(regions, states, lease(key("a"), renewed_ago=2)))
    assert (d.kind, d.holder, d.reason) == ("handover", key("c"), "Fenced")
    assert d.message == "prod/a is fenced; handing over to prod/c"


def test_fenced_holder_may_hand_over_to_a_failover_ineligible_region() -> None:
    # a handover is a switchover: spec.failover.eligible only restricts automatic failover
    regions = [make_region("a", fenced=True), make_region("b", eligible=False)]
    d = decide(view(regions, {"a": healthy(), "b": healthy()}, lease(key("a"))))
    assert (d.kind, d.holder) == ("handover", key("b"))


def test_fenced_holder_hands_over_even_while_unhealthy() -> None:
    regions = [make_region("a", fenced=True, unhealthy_after=100), make_region("b")]
    d = decide(view(regions, {"a": unhealthy(1), "b": healthy()}, lease(key("a"))))
    assert (d.kind, d.holder, d.reason) == ("handover", key("b"), "Fenced")


def test_fenced_holder_without_anyone_to_take_over_releases() -> None:
    regions = [make_region("a", fenced=True), make_region("b", scheduler=False), make_region("c")]
    states = {"a": healthy(), "b": healthy(), "c": unhealthy(100)}
    d = decide(view(regions, states, lease(key("a"))))
    assert (d.kind, d.holder, d.reason) == ("release", None, "Fenced")
    assert d.message == "prod/a is fenced and no region can take over"


def test_holder_whose_scheduler_was_disabled_gives_up_the_lease() -> None:
    regions = [make_region("a", scheduler=False), make_region("b")]
    d = decide(view(regions, {"a": healthy(), "b": healthy()}, lease(key("a"), renewed_ago=2)))
    assert d.kind in ("handover", "release")


# == promote requests ==========================================================================


def test_promote_a_healthy_standby_starts_a_switchover() -> None:
    regions = [make_region("a"), make_region("b", priority=1, promote="20260101T110000.000000Z")]
    d = decide(view(regions, {"a": healthy(), "b": healthy()}, lease(key("a"))))
    assert (d.kind, d.holder, d.reason) == ("handover", key("b"), "Switchover")
    assert d.message == "switchover from prod/a to prod/b"
    ack = d.acks[key("b")]
    assert (ack.value, ack.event_type, ack.reason) == (
        "20260101T110000.000000Z",
        "Normal",
        "SwitchoverStarted",
    )
    assert ack.message == "switchover to prod/b requested (20260101T110000.000000Z)"
    assert set(d.acks) == {key("b")}


def test_promote_a_failover_ineligible_region_is_allowed() -> None:
    regions = [make_region("a"), make_region("b", eligible=False, promote="1")]
    d = decide(view(regions, {"a": healthy(), "b": healthy()}, lease(key("a"))))
    assert (d.kind, d.holder) == ("handover", key("b"))
    assert d.acks[key("b")].reason == "SwitchoverStarted"


def test_promote_while_the_holder_is_unhealthy_still_hands_over() -> None:
    regions = [make_region("a", unhealthy_after=100), make_region("b", promote="1")]
    d = decide(view(regions, {"a": unhealthy(1), "b": healthy()}, lease(key("a"))))
    assert (d.kind, d.holder, d.reason) == ("handover", key("b"), "Switchover")


def test_promote_the_holder_itself_is_already_leader() -> None:
    regions = [make_region("a", promote="v1"), make_region("b")]
    d = decide(view(regions, {"a": healthy(), "b": healthy()}, lease(key("a"), renewed_ago=0.1)))
    assert_keep(d)
    ack = d.acks[key("a")]
    assert (ack.value, ack.event_type, ack.reason, ack.message) == (
        "v1",
        "Normal",
        "AlreadyLeader",
        "prod/a already holds the Lease",
    )


def test_promote_request_is_answered_only_once() -> None:
    regions = [make_region("a"), make_region("b", promote="v1", last_promotion="v1")]
    d = decide(view(regions, {"a": healthy(), "b": healthy()}, lease(key("a"), renewed_ago=0.1)))
    assert_keep(d)
    assert d.acks == {}


def test_a_new_promote_value_is_a_new_request() -> None:
    regions = [make_region("a"), make_region("b", promote="v2", last_promotion="v1")]
    d = decide(view(regions, {"a": healthy(), "b": healthy()}, lease(key("a"))))
    assert (d.kind, d.holder) == ("handover", key("b"))
    assert d.acks[key("b")].value == "v2"


def test_empty_promote_annotation_is_no_request() -> None:
    regions = [make_region("a"), make_region("b", promote="")]
    d = decide(view(regions, {"a": healthy(), "b": healthy()}, lease(key("a"), renewed_ago=0.1)))
    assert_keep(d)
    assert d.acks == {}


@pytest.mark.parametrize(
    ("target", "target_health", "why"),
    [
        (
            make_region("b", fenced=True, promote="v"),
            healthy(),
            "it is fenced (memoria.arcafutura.io/fenced)",
        ),
        (
            make_region("b", scheduler=False, promote="v"),
            healthy(),
            "its scheduler is disabled (spec.scheduler.enabled: false)",
        ),
        (
            make_region("b", promote="v"),
            unhealthy(3),
            "it is not healthy (http://x/healthz unreachable)",
        ),
        (make_region("b", promote="v"), None, "it is not healthy (not probed yet)"),
    ],
    ids=["fenced", "scheduler-disabled", "unhealthy", "not-probed"],
)
def test_promotion_refused(target: Region, target_health: Health | None, why: str) -> None:
    states = {"a": healthy()}
    if target_health is not None:
        states["b"] = target_health
    d = decide(view([make_region("a"), target], states, lease(key("a"), renewed_ago=0.1)))
    assert_keep(d)  # the holder stays
    ack = d.acks[key("b")]
    assert (ack.value, ack.event_type, ack.reason) == ("v", "Warning", "PromotionRefused")
    assert ack.message == f"promotion of prod/b refused: {why}"


def test_newest_promote_request_wins() -> None:
    regions = [
        make_region("a"),
        make_region("b", promote="20260101T110000.000000Z"),
        make_region("c", promote="20260101T115900.000000Z", priority=1),
        make_region("d", promote="20260101T100000.000000Z"),
    ]
    states = {n: healthy() for n in "abcd"}
    d = decide(view(regions, states, lease(key("a"))))
    assert (d.kind, d.holder, d.reason) == ("handover", key("c"), "Switchover")
    assert d.acks[key("c")].reason == "SwitchoverStarted"
    for loser in ("b", "d"):
        ack = d.acks[key(loser)]
        assert (ack.event_type, ack.reason) == ("Warning", "PromotionRefused")
        assert ack.message == f"promotion of prod/{loser} refused: a newer request from prod/c won"


def test_newest_acceptable_request_wins_when_the_newest_is_refused() -> None:
    regions = [
        make_region("a"),
        make_region("b", promote="20260101T110000.000000Z"),
        make_region("c", promote="20260101T115900.000000Z", fenced=True),
    ]
    d = decide(view(regions, {n: healthy() for n in "abc"}, lease(key("a"))))
    assert (d.kind, d.holder) == ("handover", key("b"))
    assert d.acks[key("c")].message.endswith("it is fenced (memoria.arcafutura.io/fenced)")
    assert d.acks[key("b")].reason == "SwitchoverStarted"


def test_holder_and_standby_requests_in_the_same_tick() -> None:
    regions = [make_region("a", promote="v2"), make_region("b", promote="v1")]
    d = decide(view(regions, {"a": healthy(), "b": healthy()}, lease(key("a"))))
    assert d.acks[key("a")].reason == "AlreadyLeader"
    assert d.acks[key("b")].reason == "SwitchoverStarted"
    assert (d.kind, d.holder) == ("handover", key("b"))


def test_promotions_are_refused_during_a_handover() -> None:
    regions = [make_region("a"), make_region("b"), make_region("c", promote="v")]
    states = {n: healthy(leading=True) for n in "abc"}
    d = decide(view(regions, states, handover_lease("b", "a")))
    ack = d.acks[key("c")]
    assert ack.reason == "PromotionRefused"
    assert ack.message == "promotion of prod/c refused: a handover is already in progress"
    assert d.kind == "keep"  # still waiting for a


def test_acks_ride_along_with_a_bootstrap_decision() -> None:
    regions = [make_region("a", role="leader"), make_region("b", promote="v", fenced=True)]
    d = decide(view(regions, {"a": healthy(), "b": healthy()}, None))
    assert (d.kind, d.holder) == ("acquire", key("a"))
    assert d.acks[key("b")].reason == "PromotionRefused"


@pytest.mark.parametrize(
    ("regions", "lease_"),
    [
        (
            [make_region("a", role="leader"), make_region("b", promote="v")],
            None,
        ),
        (
            [make_region("a", priority=900), make_region("b", priority=1, promote="v")],
            lease(None, renewed_ago=60),
        ),
        (
            [make_region("a", priority=900), make_region("b", priority=1, promote="v")],
            lease(key("gone")),
        ),
        (
            [
                make_region("h", fenced=True),
                make_region("a", priority=900),
                make_region("b", priority=1, promote="v"),
            ],
            lease(key("h")),
        ),
    ],
    ids=["no-lease", "unheld-lease", "deleted-holder", "fenced-holder"],
)
def test_an_accepted_promotion_is_honoured(
    regions: list[Region], lease_: dict[str, Any] | None
) -> None:
    states = {r.name: healthy() for r in regions}
    d = decide(view(regions, states, lease_))
    ack = d.acks[key("b")]
    # either the request is refused, or the Lease actually moves towards b
    assert ack.reason != "SwitchoverStarted" or d.holder == key("b")


# == continuing a two-phase handover ===========================================================


def test_handover_waits_while_the_old_leader_still_leads() -> None:
    regions = [make_region("a"), make_region("b")]
    d = decide(
        view(regions, {"a": healthy(leading=True), "b": healthy()}, handover_lease("b", "a"))
    )
    assert_keep(d)
    assert d.message == "waiting for prod/a to stop its scheduler"


def test_handover_waits_when_the_old_leader_has_not_said() -> None:
    regions = [make_region("a"), make_region("b")]
    d = decide(
        view(regions, {"a": healthy(leading=None), "b": healthy()}, handover_lease("b", "a"))
    )
    assert_keep(d)


def test_handover_waits_when_the_old_leader_was_never_probed() -> None:
    regions = [make_region("a"), make_region("b")]
    d = decide(view(regions, {"b": healthy()}, handover_lease("b", "a", renewed_ago=1)))
    assert_keep(d)


def test_handover_completes_when_the_old_leader_stopped() -> None:
    regions = [make_region("a"), make_region("b")]
    d = decide(
        view(regions, {"a": healthy(leading=False), "b": healthy()}, handover_lease("b", "a"))
    )
    assert (d.kind, d.holder, d.reason) == ("acquire", key("b"), "Switchover")
    assert d.message == "prod/b takes over from prod/a (switchover)"


def test_handover_completes_when_an_unhealthy_old_leader_reports_stopped() -> None:
    regions = [make_region("a"), make_region("b")]
    d = decide(
        view(regions, {"a": unhealthy(1, leading=False), "b": healthy()}, handover_lease("b", "a"))
    )
    assert (d.kind, d.holder) == ("acquire", key("b"))


@pytest.mark.parametrize(
    ("renewed_ago", "kind"), [(2.999, "keep"), (3.0, "acquire"), (30.0, "acquire")]
)
def test_handover_completes_once_the_old_grant_expired(renewed_ago: float, kind: str) -> None:
    regions = [make_region("a"), make_region("b")]
    states = {"a": healthy(leading=True), "b": healthy()}
    d = decide(view(regions, states, handover_lease("b", "a", renewed_ago=renewed_ago)))
    assert d.kind == kind
    if kind == "acquire":
        assert d.holder == key("b")


def test_handover_completes_when_the_old_leader_was_deleted() -> None:
    d = decide(view([make_region("b")], {"b": healthy()}, handover_lease("b", "a")))
    assert (d.kind, d.holder) == ("acquire", key("b"))
    assert d.message == "prod/b takes over from prod/a (switchover)"


def test_handover_keeps_the_recorded_reason() -> None:
    regions = [make_region("a", fenced=True), make_region("b")]
    states = {"a": healthy(leading=False), "b": healthy()}
    d = decide(view(regions, states, handover_lease("b", "a", reason="Fenced")))
    assert (d.kind, d.holder, d.reason) == ("acquire", key("b"), "Fenced")
    assert d.message == "prod/b takes over from prod/a (fenced)"


def test_handover_without_a_recorded_reason_is_a_switchover() -> None:
    regions = [make_region("a"), make_region("b")]
    states = {"a": healthy(leading=False), "b": healthy()}
    d = decide(view(regions, states, handover_lease("b", "a", reason=None)))
    assert d.reason == "Switchover"


def test_handover_target_may_be_failover_ineligible() -> None:
    regions = [make_region("a"), make_region("b", eligible=False)]
    states = {"a": healthy(leading=False), "b": healthy()}
    d = decide(view(regions, states, handover_lease("b", "a")))
    assert (d.kind, d.holder) == ("acquire", key("b"))


def test_handover_is_abandoned_when_the_target_is_gone() -> None:
    regions = [make_region("a"), make_region("c", priority=999)]
    states = {"a": healthy(leading=False), "c": healthy()}
    d = decide(view(regions, states, handover_lease("b", "a")))
    assert (d.kind, d.holder, d.reason) == ("release", None, "Released")
    assert d.message == "handover to prod/b abandoned: target gone or no longer eligible"


@pytest.mark.parametrize(
    ("target", "target_health"),
    [
        (make_region("b", fenced=True), healthy()),
        (make_region("b", scheduler=False), healthy()),
        (make_region("b"), unhealthy(1)),
        (make_region("b"), None),
    ],
    ids=["fenced", "scheduler-disabled", "unhealthy", "not-probed"],
)
def test_handover_is_abandoned_when_the_target_may_no_longer_lead(
    target: Region, target_health: Health | None
) -> None:
    states = {"a": healthy(leading=False)}
    if target_health is not None:
        states["b"] = target_health
    d = decide(view([make_region("a"), target], states, handover_lease("b", "a")))
    assert (d.kind, d.holder, d.reason) == ("release", None, "Released")


@pytest.mark.parametrize("old_health", [healthy(leading=True), healthy(leading=False)])
def test_a_target_unhealthy_for_less_than_its_bound_is_waited_for(old_health: Health) -> None:
    """An operator pod that takes over mid-switchover judges the target before its watch has
    delivered the target's Deployment: giving up then turned the switchover into a failover."""
    never_answered = replace(unhealthy(9.9), last_ok=None)
    states = {"a": old_health, "b": never_answered}
    d = decide(view([make_region("a"), make_region("b")], states, handover_lease("b", "a")))
    assert (d.kind, d.holder) == ("keep", None)
    assert d.message == "waiting for prod/b to answer again before it takes over"
    # seen answering, then failing: given up at once, another leader is picked as usual
    states["b"] = unhealthy(1)
    d = decide(view([make_region("a"), make_region("b")], states, handover_lease("b", "a")))
    assert (d.kind, d.reason) == ("release", "Released")
    states["b"] = replace(unhealthy(10), last_ok=None)  # never answered, for its whole bound
    d = decide(view([make_region("a"), make_region("b")], states, handover_lease("b", "a")))
    assert (d.kind, d.reason) == ("release", "Released")
    states["b"] = healthy()
    d = decide(view([make_region("a"), make_region("b")], states, handover_lease("b", "a")))
    if old_health.leading is False:
        assert (d.kind, d.holder, d.reason) == ("acquire", key("b"), "Switchover")
    else:
        assert d.kind == "keep"  # the old leader has not said it stopped, its grant is valid


def test_handover_is_not_a_bootstrap_and_ignores_roles_and_priorities() -> None:
    regions = [
        make_region("a"),
        make_region("b", priority=1),
        make_region("z", role="leader", priority=999),
    ]
    states = {"a": healthy(leading=False), "b": healthy(), "z": healthy()}
    d = decide(view(regions, states, handover_lease("b", "a")))
    assert (d.kind, d.holder) == ("acquire", key("b"))
    assert d.conflict == []


# == GroupView and time helpers ================================================================


def test_candidates_order_and_filters() -> None:
    regions = [
        make_region("a", priority=10),
        make_region("b", priority=30),
        make_region("c", priority=30, eligible=False),
        make_region("d", priority=50, fenced=True),
    ]
    v = view(regions, {n: healthy() for n in "abcd"}, None)
    assert [r.name for r in v.candidates(failover=False)] == ["b", "c", "a"]
    assert [r.name for r in v.candidates(failover=True)] == ["b", "a"]
    assert [r.name for r in v.candidates(failover=False, exclude=key("b"))] == ["c", "a"]


def test_view_healthy() -> None:
    v = view([make_region("a")], {"a": healthy(), "b": unhealthy(1)}, None)
    assert v.healthy(key("a")) is True
    assert v.healthy(key("b")) is False
    assert v.healthy(key("missing")) is False


def test_micro_time_and_parse_time_round_trip() -> None:
    moment = dt.datetime(2026, 1, 1, 0, 0, 0, 123456, tzinfo=dt.UTC)
    assert micro_time(moment) == "2026-01-01T00:00:00.123456Z"
    assert parse_time(micro_time(moment)) == moment
    other_zone = moment.astimezone(dt.timezone(dt.timedelta(hours=5)))
    assert micro_time(other_zone) == "2026-01-01T00:00:00.123456Z"


def test_parse_time_empty() -> None:
    assert parse_time(None) is None
    assert parse_time("") is None
    assert parse_time("2026-01-01T00:00:00Z") == dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def test_decide_does_not_change_its_view() -> None:
    regions = [make_region("a", unhealthy_after=1), make_region("b", promote="v")]
    states = {"a": unhealthy(5), "b": healthy()}
    lease_ = lease(key("a"), renewed_ago=60)
    v = view(regions, states, lease_)
    snapshot = (repr(v.lease), dict(v.regions), dict(v.health), v.now, v.mono)
    decide(v)
    assert (repr(v.lease), dict(v.regions), dict(v.health), v.now, v.mono) == snapshot


# == a Lease that outlived its holder (regions deleted and created again) =======================


def _stale(holder: str) -> dict[str, Any]:
    # granted to an earlier incarnation of `holder`, still fresh: the reinstall case of issue 12
    return lease(key(holder), annotations={"memoria.arcafutura.io/holder-uid": "uid-gone"})


def test_stale_holder_waits_for_the_spec_leader_instead_of_failing_over() -> None:
    regions = [make_region("a", role="leader"), make_region("b", priority=900)]
    d = decide(view(regions, {"a": unhealthy(30), "b": healthy()}, _stale("a")))
    assert_keep(d)
    assert "was deleted and created again" in d.message
    assert "waiting for the bootstrap leader" in d.message


def test_stale_holder_gives_the_lease_to_the_spec_leader_once_healthy() -> None:
    regions = [make_region("a", role="leader"), make_region("b", priority=900)]
    d = decide(view(regions, {"a": healthy(), "b": healthy()}, _stale("b")))
    assert (d.kind, d.holder, d.reason) == ("acquire", key("a"), "Bootstrap")


def test_stale_holder_without_a_spec_leader_goes_to_the_best_standby() -> None:
    regions = [make_region("a"), make_region("b", priority=900)]
    d = decide(view(regions, {"a": healthy(), "b": healthy()}, _stale("a")))
    assert (d.kind, d.holder, d.reason) == ("acquire", key("b"), "Failover")


def test_same_incarnation_keeps_renewing() -> None:
    regions = [make_region("a", role="leader"), make_region("b")]
    current = lease(
        key("a"), renewed_ago=5, annotations={"memoria.arcafutura.io/holder-uid": "uid-a"}
    )
    d = decide(view(regions, {"a": healthy(), "b": healthy()}, current))
    assert (d.kind, d.holder) == ("renew", None)
