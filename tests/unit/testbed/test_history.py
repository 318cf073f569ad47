"""The federation bed's judge (testbed.history): synthetic histories that must fail and pass."""

from __future__ import annotations

import time

import pytest

from testbed.history import (
    DecrementRow,
    Fault,
    History,
    LeadershipRecorder,
    ProbeReading,
    StoreView,
    Violation,
    check,
    healthy_windows,
    leaderless_stretches,
    leading_runs,
    sampling_granularity,
)

CLUSTERS = ("us", "eu", "ap")
STEP = 0.05


def history(
    leaders: dict[str, list[tuple[float, float]]],
    end: float = 20.0,
    *,
    down: dict[str, list[tuple[float, float]]] | None = None,
    faults: list[Fault] | None = None,
) -> History:
    """Every cluster polled every STEP s over [0, end]: it says it leads inside one of its
    ``leaders`` intervals, does not answer inside one of its ``down`` ones, else says no."""
    h = History(CLUSTERS, interval=STEP, faults=list(faults or []))
    n = round(end / STEP)
    for i in range(n + 1):
        t = i * STEP
        for offset, c in enumerate(CLUSTERS):
            at = t + offset * 0.005  # polled one after the other
            if any(a <= at < b for a, b in (down or {}).get(c, [])):
                h.observe(at, c, None)
            else:
                h.observe(at, c, any(a <= at < b for a, b in leaders.get(c, [])))
    return h


def kinds(violations: list[Violation]) -> list[str]:
    return [v.kind for v in violations]


def store(cluster: str, dates: list[str], *, by: str = "region-us", **probe: float) -> StoreView:
    rows = tuple(DecrementRow(d, by, "t") for d in dates)
    reading = None
    if "x" in probe:
        reading = ProbeReading("p1", 1000.0, "2024-01-01", probe["x"])
    return StoreView(cluster, rows, reading)


# -- (a) two leaders at once ------------------------------------------------------------------


def test_one_leader_after_another_passes() -> None:
    h = history({"us": [(0, 10)], "eu": [(10.2, 20)]})
    assert check(h, {}, bound=5, skew=1) == []


def test_two_leaders_for_longer_than_the_skew_fail() -> None:
    h = history({"us": [(0, 10)], "eu": [(8, 20)]})
    found = check(h, {}, bound=5, skew=1)
    assert kinds(found) == ["split-brain"]
    assert "ap" not in found[0].detail
    assert found[0].start == pytest.approx(8, abs=0.1)
    assert found[0].end == pytest.approx(10, abs=0.1)


def test_an_overlap_within_skew_and_sampling_passes() -> None:
    # a handover that overlaps by 0.5 s where 1 s of clock skew is allowed
    h = history({"us": [(0, 10.5)], "eu": [(10, 20)]})
    assert check(h, {}, bound=5, skew=1) == []
    assert kinds(check(h, {}, bound=5, skew=0.2)) == ["split-brain"]


def test_a_region_that_stops_answering_is_not_counted_as_leading() -> None:
    # us led, was killed (no answers), came back as a standby: no overlap with eu
    h = history({"us": [(0, 5)], "eu": [(6, 20)]}, down={"us": [(5, 12)]})
    assert check(h, {}, bound=5, skew=1) == []
    runs = leading_runs([o for o in h.observations if o.cluster == "us"])
    assert len(runs) == 1
    assert runs[0][1] < 5


def test_sampling_granularity_is_about_the_poll_interval() -> None:
    h = history({"us": [(0, 20)]})
    assert sampling_granularity(h) == pytest.approx(STEP, abs=0.01)


# -- (b) decrements ---------------------------------------------------------------------------


def test_consistent_stores_pass() -> None:
    dates = ["2024-01-02", "2024-01-03"]
    stores = {
        "us": store("us", dates, x=998),
        "eu": store("eu", dates, x=998),
        # a store that missed a date (say it was down) is behind, not wrong
        "ap": store("ap", dates[:1], x=999),
    }
    assert check(History(CLUSTERS), stores, bound=5, skew=1) == []


def test_a_date_logged_twice_fails() -> None:
    s = store("us", ["2024-01-02", "2024-01-02"], x=999)
    assert "double-decrement" in kinds(check(History(CLUSTERS), {"us": s}, bound=5, skew=1))


def test_a_probe_decremented_twice_for_one_date_fails() -> None:
    # the log has each date once (its primary key), yet x_coord moved by 3 for 2 dates
    s = store("eu", ["2024-01-02", "2024-01-03"], x=997)
    found = check(History(CLUSTERS), {"eu": s}, bound=5, skew=1)
    assert kinds(found) == ["probe-mismatch"]
    assert "more times" in found[0].detail


def test_a_probe_not_decremented_for_a_logged_date_fails() -> None:
    s = store("eu", ["2024-01-02", "2024-01-03"], x=999)
    found = check(History(CLUSTERS), {"eu": s}, bound=5, skew=1)
    assert kinds(found) == ["probe-mismatch"]
    assert "fewer" in found[0].detail


def test_dates_up_to_the_probes_own_are_not_counted() -> None:
    s = store("us", ["2023-12-31", "2024-01-01", "2024-01-02"], x=999)
    assert check(History(CLUSTERS), {"us": s}, bound=5, skew=1) == []


def test_a_missing_probe_fails() -> None:
    s = StoreView("ap", (), ProbeReading("p1", 1000.0, "", None))
    assert kinds(check(History(CLUSTERS), {"ap": s}, bound=5, skew=1)) == ["probe-missing"]


def test_one_date_run_by_two_regions_fails() -> None:
    stores = {
        "us": store("us", ["2024-01-02"], by="region-us", x=999),
        "eu": store("eu", ["2024-01-02"], by="region-eu", x=999),
    }
    found = check(History(CLUSTERS), stores, bound=5, skew=1)
    assert kinds(found) == ["two-runners"]
    assert "region-eu, region-us" in found[0].detail


# -- (c) liveness -----------------------------------------------------------------------------


def test_nobody_leading_while_a_majority_is_up_fails() -> None:
    h = history({"us": [(0, 5)], "eu": [(12, 20)]})  # 7 s without a leader, all up
    found = check(h, {}, bound=5, skew=1)
    assert kinds(found) == ["no-leader"]
    assert found[0].start == pytest.approx(5, abs=0.1)
    assert found[0].end == pytest.approx(12, abs=0.1)


def test_a_gap_within_the_bound_passes() -> None:
    h = history({"us": [(0, 5)], "eu": [(9, 20)]})
    assert check(h, {}, bound=5, skew=1) == []


def test_nobody_leading_without_a_majority_passes() -> None:
    # us killed and eu's operator cannot reach ap's API server: no two clusters both up and
    # connected both ways, so nobody has to lead
    faults = [Fault("cluster", "us", 5.0, end=15.0), Fault("link", "eu", 4.0, "ap", 15.0)]
    h = history({"us": [(0, 5)], "eu": [(16, 20)]}, faults=faults)
    assert check(h, {}, bound=5, skew=1) == []
    # with the link cut but us still up, us and eu (or us and ap) were a majority; from
    # the kill to the heals there was none, and the 1 s after the heals counts, not the 10 before
    assert healthy_windows(CLUSTERS, faults, 0, 20) == [(0, 5.0), (15.0, 20)]


def test_one_cluster_down_leaves_a_majority_that_must_elect() -> None:
    faults = [Fault("cluster", "us", 5.0, end=None)]
    h = history({"us": [(0, 5)]}, down={"us": [(5, 20)]}, faults=faults)
    found = check(h, {}, bound=5, skew=1)
    assert kinds(found) == ["no-leader"]
    assert found[0].start == pytest.approx(5, abs=0.1)


def test_a_one_way_cut_breaks_the_pair() -> None:
    faults = [Fault("link", "us", 0.0, "eu"), Fault("operator", "ap", 0.0)]
    assert healthy_windows(CLUSTERS, faults, 0, 10) == []
    assert healthy_windows(CLUSTERS, faults[:1], 0, 10) == [(0, 10)]


def test_a_gap_that_began_during_a_fault_is_timed_from_the_heal() -> None:
    faults = [Fault("apiserver", "us", 2.0, end=10.0), Fault("apiserver", "eu", 2.0, end=10.0)]
    ok = history({"us": [(0, 2)], "eu": [(14, 20)]}, faults=faults)  # 4 s after the heal
    assert check(ok, {}, bound=5, skew=1) == []
    late = history({"us": [(0, 2)], "eu": [(17, 20)]}, faults=faults)  # 7 s after it
    assert kinds(check(late, {}, bound=5, skew=1)) == ["no-leader"]


def test_leaderless_stretches_cover_the_start_and_the_end() -> None:
    h = history({"eu": [(3, 8)]}, end=12)
    stretches = leaderless_stretches(h, 0, 12)
    assert len(stretches) == 2
    assert stretches[0][0] == 0
    assert stretches[0][1] == pytest.approx(3, abs=0.1)
    assert stretches[1][0] == pytest.approx(8, abs=0.1)
    assert stretches[1][1] == 12


# -- recording ----------------------------------------------------------------------------------


def test_fault_windows_open_and_close_once() -> None:
    h = History(CLUSTERS)
    h.fault_on("link", "us", "eu")
    h.fault_on("link", "us", "eu")  # already open: no second window
    h.fault_off("link", "us", "eu")
    h.fault_off("link", "us", "eu")
    assert len(h.faults) == 1
    assert h.faults[0].end is not None


def test_the_recorder_polls_every_cluster() -> None:
    h = History(CLUSTERS, interval=0.01)

    def leading(cluster: str) -> bool | None:
        if cluster == "ap":
            raise ConnectionError("gone")
        return cluster == "us"

    with LeadershipRecorder(h, leading):
        time.sleep(0.2)
    seen = {(o.cluster, o.leads) for o in h.observations}
    assert seen == {("us", True), ("eu", False), ("ap", None)}
    assert len(h.observations) >= 9
