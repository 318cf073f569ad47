"""Status conditions: construction and the merge that keeps lastTransitionTime honest."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pytest

from memoria_operator import conditions as c

T0 = "2026-01-01T00:00:00Z"
T1 = "2026-01-01T00:05:00Z"
T2 = "2026-01-01T00:10:00Z"


def cond(
    type_: str,
    status: str,
    reason: str = "R",
    message: str = "m",
    when: str = T0,
    generation: int = 1,
) -> dict[str, Any]:
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": when,
    }


# -- condition() ---------------------------------------------------------------------------


@pytest.mark.parametrize(("ok", "status"), [(True, "True"), (False, "False"), (None, "Unknown")])
def test_condition_status_from_ok(ok: bool | None, status: str) -> None:
    got = c.condition(c.READY, ok, c.AVAILABLE, "fine", 7)
    assert got["status"] == status


def test_condition_carries_every_field() -> None:
    got = c.condition(c.CONFIG_VALID, False, "InvalidTimeZone", "bad zone", 3)
    assert set(got) == {
        "type",
        "status",
        "reason",
        "message",
        "observedGeneration",
        "lastTransitionTime",
    }
    assert got["type"] == "ConfigValid"
    assert got["reason"] == "InvalidTimeZone"
    assert got["message"] == "bad zone"
    assert got["observedGeneration"] == 3


def test_condition_time_is_now_in_utc_rfc3339_seconds() -> None:
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    got = c.condition(c.READY, True, c.AVAILABLE, "x", 1)["lastTransitionTime"]
    after = dt.datetime.now(dt.UTC)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", got)
    moment = dt.datetime.strptime(got, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    assert before <= moment <= after


def test_now_format() -> None:
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", c.now())


# -- merge() -------------------------------------------------------------------------------


def test_merge_into_empty_appends_in_update_order() -> None:
    updates = [cond("Ready", "True", when=T1), cond("ConfigValid", "True", when=T1)]
    merged = c.merge([], updates)
    assert [m["type"] for m in merged] == ["Ready", "ConfigValid"]
    assert merged == updates


def test_merge_keeps_transition_time_when_status_unchanged() -> None:
    existing = [cond("Ready", "False", reason="SecretMissing", message="old", when=T0)]
    update = cond("Ready", "False", reason="Unavailable", message="new", when=T1, generation=2)
    [merged] = c.merge(existing, [update])
    assert merged["lastTransitionTime"] == T0
    # everything else comes from the update
    assert merged["reason"] == "Unavailable"
    assert merged["message"] == "new"
    assert merged["observedGeneration"] == 2
    assert merged["status"] == "False"


@pytest.mark.parametrize(
    ("old", "new"),
    [("True", "False"), ("False", "True"), ("Unknown", "True"), ("True", "Unknown")],
)
def test_merge_moves_transition_time_when_status_flips(old: str, new: str) -> None:
    existing = [cond("Ready", old, when=T0)]
    [merged] = c.merge(existing, [cond("Ready", new, when=T1)])
    assert merged["status"] == new
    assert merged["lastTransitionTime"] == T1


def test_merge_unchanged_status_without_old_time_takes_the_new_one() -> None:
    old = cond("Ready", "True")
    del old["lastTransitionTime"]
    [merged] = c.merge([old], [cond("Ready", "True", when=T2)])
    assert merged["lastTransitionTime"] == T2


def test_merge_order_existing_first_then_new_types() -> None:
    existing = [cond("B", "True"), cond("A", "True"), cond("C", "True")]
    updates = [cond("D", "True"), cond("A", "False", when=T1), cond("E", "True")]
    merged = c.merge(existing, updates)
    assert [m["type"] for m in merged] == ["B", "A", "C", "D", "E"]
    assert c.find(merged, "A") == cond("A", "False", when=T1)


def test_merge_leaves_untouched_types_alone() -> None:
    untouched = cond("SecretsAvailable", "False", reason="SecretMissing", when=T0)
    existing = [cond("Ready", "True"), untouched]
    merged = c.merge(existing, [cond("Ready", "False", when=T1)])
    assert merged[1] == untouched


def test_merge_does_not_mutate_its_inputs() -> None:
    existing = [cond("Ready", "True", message="old", when=T0)]
    updates = [cond("Ready", "True", message="new", when=T1), cond("X", "False", when=T1)]
    existing_copy = [dict(x) for x in existing]
    updates_copy = [dict(x) for x in updates]
    merged = c.merge(existing, updates)
    merged[0]["message"] = "changed after merge"
    assert existing == existing_copy
    assert updates == updates_copy


def test_merge_same_type_twice_in_updates_appears_once_last_wins() -> None:
    merged = c.merge(
        [],
        [cond("Ready", "False", reason="First", when=T0), cond("Ready", "False", when=T1)],
    )
    assert len(merged) == 1
    assert merged[0]["reason"] == "R"
    # the second update saw the first as the existing condition with the same status
    assert merged[0]["lastTransitionTime"] == T0


def test_merge_chain_keeps_original_time_over_several_steps() -> None:
    step1 = c.merge([], [cond("Ready", "False", when=T0)])
    step2 = c.merge(step1, [cond("Ready", "False", message="still", when=T1)])
    step3 = c.merge(step2, [cond("Ready", "True", when=T2)])
    step4 = c.merge(step3, [cond("Ready", "True", message="again", when="2027-01-01T00:00:00Z")])
    assert step2[0]["lastTransitionTime"] == T0
    assert step3[0]["lastTransitionTime"] == T2
    assert step4[0]["lastTransitionTime"] == T2


# -- find() --------------------------------------------------------------------------------


def test_find_returns_the_condition_of_that_type() -> None:
    conds = [cond("Ready", "True"), cond("ConfigValid", "False", reason="X")]
    assert c.find(conds, "ConfigValid") is conds[1]


def test_find_missing_type_is_none() -> None:
    assert c.find([cond("Ready", "True")], "DeploymentAvailable") is None
    assert c.find([], "Ready") is None


def test_find_tolerates_entries_without_type() -> None:
    conds: list[dict[str, Any]] = [{"status": "True"}, cond("Ready", "False")]
    assert c.find(conds, "Ready") is conds[1]


def test_condition_type_and_reason_constants() -> None:
    # users grep for these; the troubleshooting guide and the CRD's printer columns use them
    assert (c.READY, c.CONFIG_VALID, c.SECRETS_AVAILABLE, c.DEPLOYMENT_AVAILABLE) == (
        "Ready",
        "ConfigValid",
        "SecretsAvailable",
        "DeploymentAvailable",
    )
    assert c.LEADERSHIP == "LeadershipValid"
    assert c.LEADER_CONFLICT == "LeaderConflict"


def test_ready_sums_up_health_too() -> None:
    """The leadership loop's Healthy condition counts for Ready, like the reconciler's."""
    ok = [
        c.condition(c.CONFIG_VALID, True, c.VALID, "", 1),
        c.condition(c.DEPLOYMENT_AVAILABLE, True, c.AVAILABLE, "1/1", 1),
    ]
    # an available Deployment alone is not Ready: nobody has asked the region yet
    waiting = c.ready(ok, 1)
    assert (waiting["status"], waiting["reason"]) == ("False", c.NOT_PROBED)
    answered = [*ok, c.condition(c.HEALTHY, True, c.PROBES_ANSWER, "ok", 1)]
    assert c.ready(answered, 1)["status"] == "True"
    sick = [*ok, c.condition(c.HEALTHY, False, c.UNHEALTHY, "cannot watch its Lease", 1)]
    ready = c.ready(sick, 1)
    assert (ready["status"], ready["reason"], ready["message"]) == (
        "False",
        c.UNHEALTHY,
        "cannot watch its Lease",
    )
    # the first failing input in READY_INPUTS order gives the reason
    worse = [c.condition(c.CONFIG_VALID, False, "Bad", "spec is wrong", 1), *sick[1:]]
    assert c.ready(worse, 1)["reason"] == "Bad"
