"""Operator II: Lease-based leadership with real region processes, on the real control plane."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import pytest

from memoria.store import MemoryStore
from testbed import PostgresServer, wait_until
from testbed.cluster import condition, get
from testbed.harness import OperatorRun, running_operator
from testbed.inprocess import seed_memories
from testbed.kube import KubeTarget
from testbed.regions import (
    LEASE,
    LeadershipSampler,
    RegionBed,
    health_failover,
    leadership_log,
    region_bed,
    region_manifest,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
MIDNIGHT_IN = 60  # seconds after the test starts, by the regions' clocks (CI shares 2 cores)


def test_only_the_leader_decrements(
    crd_installed: KubeTarget, namespace: str, tmp_path: Path, operator: OperatorRun
) -> None:
    with region_bed(crd_installed, namespace, tmp_path, operator=operator) as bed:
        bed.wait_leader("region-a")
        ns = namespace
        assert bed.leading("region-b") is False
        a, b = bed.processes["region-a"], bed.processes["region-b"]
        mid = a.write("remember me", y=0)
        wait_until(lambda: b.request("GET", f"/memories/{mid}")[0] == 200, what="replication")
        # the leader's catch-up ran today's decrement; the standby applied it from the event
        wait_until(
            lambda: bed.store_metadata("region-b").get("last_decrement_by") == "region-a",
            what="the standby to apply the leader's decrement",
        )
        meta_a = bed.store_metadata("region-a")
        assert meta_a["last_decrement_by"] == "region-a"
        assert meta_a["last_decrement_token"] == str(bed.lease()["spec"]["leaseTransitions"])
        assert "decrement for" in a.log_path.read_text()
        assert "decrement timer armed" not in b.log_path.read_text()
        # statuses and the printer columns show who leads
        assert bed.region("region-a")["status"]["role"] == "leader"
        assert bed.region("region-b")["status"]["role"] == "standby"
        assert bed.region("region-b")["status"]["leadership"]["holder"] == f"{ns}/region-a"
        assert bed.region("region-a")["status"]["leadership"]["lastTransitionReason"] == (
            "Bootstrap"
        )
        bed.wait_events("region-a", "LeadershipAcquired")


@pytest.mark.parametrize("how", ["kubectl", "admin-promote"])
def test_switchover(
    crd_installed: KubeTarget, namespace: str, tmp_path: Path, operator: OperatorRun, how: str
) -> None:
    with region_bed(crd_installed, namespace, tmp_path, operator=operator) as bed:
        bed.wait_leader("region-a")
        token_before = bed.lease()["spec"]["leaseTransitions"]
        with LeadershipSampler(bed, ("region-a", "region-b")) as sampler:
            started = time.monotonic()
            if how == "kubectl":
                crd_installed.kubectl(
                    "annotate",
                    "mreg",
                    "region-b",
                    "-n",
                    namespace,
                    "--overwrite",
                    f"memoria.arcafutura.io/promote={int(time.time())}",
                )
            else:
                status, body = bed.processes["region-b"].request("POST", "/admin/promote")
                assert status == 202, body
            bed.wait_leader("region-b", timeout=10)
            elapsed = time.monotonic() - started
            time.sleep(0.3)
        print(f"switchover ({how}) seen in {elapsed:.1f}s")  # timed by bench/leadership_bench.py
        assert sampler.both_leading() == [], "both regions said they lead at the same time"
        assert bed.leading("region-a") is False
        lease = bed.lease()
        assert lease["spec"]["leaseTransitions"] >= token_before + 1
        a, b = bed.region("region-a"), bed.region("region-b")
        assert (a["status"]["role"], b["status"]["role"]) == ("standby", "leader")
        assert b["status"]["leadership"]["lastTransitionReason"] == "Switchover"
        assert b["status"]["leadership"]["lastPromotion"]
        bed.wait_events("region-b", "SwitchoverStarted", "LeadershipAcquired")
        wait_until(
            lambda: {"LeadershipReleased", "LeadershipLost"} & set(bed.events("region-a")),
            10,
            "region-a's LeadershipReleased or LeadershipLost",
        )
        # the logs agree: region-a stopped leading before region-b started
        a_log = leadership_log(bed.processes["region-a"])
        last_on = max(i for i, (_, leads) in enumerate(a_log) if leads)
        a_off = next(t for t, leads in a_log[last_on:] if not leads)
        b_on = [t for t, leads in leadership_log(bed.processes["region-b"]) if leads][-1]
        assert a_off <= b_on
        # the request is handled once: nothing moves on the next ticks
        time.sleep(2)
        assert bed.holder() == f"{namespace}/region-b"


def test_failover_drill_and_no_failback(
    crd_installed: KubeTarget, namespace: str, tmp_path: Path, operator: OperatorRun
) -> None:
    bound = 3
    with region_bed(crd_installed, namespace, tmp_path, bound=bound, operator=operator) as bed:
        bed.wait_leader("region-a")
        killed = time.monotonic()
        bed.processes["region-a"].kill()
        bed.wait_leader("region-b", timeout=bound + 10)
        took = time.monotonic() - killed
        assert took <= bound + 2 + 1.5, took  # bound + 2 s, plus the 1.5 s the probe may lag
        b = bed.region("region-b")
        assert b["status"]["leadership"]["lastTransitionReason"] == "Failover"
        assert bed.region("region-a")["status"]["health"]["healthy"] is False
        bed.wait_events("region-a", "LeadershipLost")
        # region-a comes back: it stays a standby (no automatic failback)
        bed.start("region-a")
        wait_until(
            lambda: bed.region("region-a")["status"]["health"]["healthy"],
            10,
            "region-a healthy again",
        )
        time.sleep(2)
        assert bed.holder() == f"{namespace}/region-b"
        assert bed.leading("region-a") is False


def test_operator_killed_mid_failover_leaves_one_leader(
    crd_installed: KubeTarget, namespace: str, tmp_path: Path
) -> None:
    with region_bed(crd_installed, namespace, tmp_path, bound=4) as bed:
        with running_operator(crd_installed):
            bed.bring_up()
            bed.wait_leader("region-a")
            bed.processes["region-a"].kill()
            # the operator sees region-a unhealthy, but dies before the bound has passed
            wait_until(
                lambda: bed.region("region-a")["status"].get("health", {}).get("healthy") is False,
                10,
                "region-a seen unhealthy",
            )
        assert bed.holder() == f"{namespace}/region-a"
        with running_operator(crd_installed):
            bed.wait_leader("region-b", timeout=20)
            time.sleep(1.5)
            roles = [bed.region(n)["status"]["role"] for n in ("region-a", "region-b")]
            assert roles == ["standby", "leader"]
            assert bed.holder() == f"{namespace}/region-b"


def test_fenced_region_never_leads(
    crd_installed: KubeTarget, namespace: str, tmp_path: Path, operator: OperatorRun
) -> None:
    with region_bed(crd_installed, namespace, tmp_path, operator=operator) as bed:
        bed.wait_leader("region-a")
        crd_installed.kubectl(
            "annotate", "mreg", "region-a", "-n", namespace, "memoria.arcafutura.io/fenced=true"
        )
        bed.wait_leader("region-b", timeout=10)
        assert bed.region("region-a")["status"]["fenced"] is True
        assert bed.region("region-b")["status"]["leadership"]["lastTransitionReason"] == "Fenced"
        crd_installed.kubectl(
            "annotate",
            "mreg",
            "region-a",
            "-n",
            namespace,
            "--overwrite",
            f"memoria.arcafutura.io/promote={int(time.time())}",
        )
        wait_until(lambda: "PromotionRefused" in bed.events("region-a"), 10, "refusal")
        # and when the leader dies, the fenced region is still not chosen
        bed.processes["region-b"].kill()
        time.sleep(6)
        assert bed.holder() in (f"{namespace}/region-b", None)
        assert bed.leading("region-a") is False


def test_two_regions_asking_to_lead_get_a_condition(
    crd_installed: KubeTarget, namespace: str, tmp_path: Path
) -> None:
    for name, port in (("one", 1), ("two", 2)):
        manifest = region_manifest(
            name, role="leader", priority=100, failover=health_failover(port)
        )
        crd_installed.apply(manifest, namespace)
    with running_operator(crd_installed):
        for name in ("one", "two"):
            wait_until(
                lambda n=name: condition(
                    get(crd_installed, "mreg", n, namespace), "LeadershipValid"
                ),
                what="condition",
            )
            cond = condition(get(crd_installed, "mreg", name, namespace), "LeadershipValid")
            assert cond["status"] == "False" and cond["reason"] == "LeaderConflict"
            assert "set spec.role: leader on exactly one" in cond["message"]
        time.sleep(1)
        lease = get(crd_installed, "lease", LEASE, namespace)
        assert lease is None or not lease["spec"].get("holderIdentity")


def test_split_brain_is_fenced_in_a_shared_store(
    crd_installed: KubeTarget, namespace: str, tmp_path: Path, postgres_server: PostgresServer
) -> None:
    """The test rewrites the Lease behind a leader that cannot see the API server any more:
    both processes believe they lead; the shared store still decrements each date once."""
    store = postgres_server.create_database(f"split_{namespace.replace('-', '_')}")
    seed = MemoryStore(store)
    seed_memories(seed, 10)
    seed.close()
    # both regions' clocks run ahead so that midnight comes MIDNIGHT_IN s after they start,
    # while both believe they lead
    now = dt.datetime.now(dt.UTC)
    midnight = dt.datetime.combine(now.date() + dt.timedelta(days=1), dt.time(), dt.UTC)
    offset = (midnight - now).total_seconds() - MIDNIGHT_IN
    with region_bed(crd_installed, namespace, tmp_path, start_processes=False) as bed:
        # region-a, the one that will be stale, reaches midnight 1.5 s first: it must try
        # and be refused by its fencing token, not merely find the day already done
        bed.extra_env = {
            name: {
                "MEMORIA_DATABASE__CONNECTION_STRING": store,
                "MEMORIA_SCHEDULER__CLOCK_OFFSET_SECONDS": f"{offset + ahead:.3f}",
            }
            for name, ahead in (("region-a", 1.5), ("region-b", 0.0))
        }
        with running_operator(crd_installed):
            bed.bring_up(start_processes=False)
            bed.start("region-a", via_proxy=True)
            bed.start("region-b")
            bed.wait_leader("region-a")
        # the operator is gone now; the region processes keep running
        _split_brain(crd_installed, bed, namespace, store, midnight.date().isoformat())


def _x_values(store: str) -> set[float]:
    check = MemoryStore(store)
    try:
        return {m.x_coord for m in check.list_memories(limit=100)}
    finally:
        check.close()


def _split_brain(
    kube: KubeTarget, bed: RegionBed, namespace: str, store: str, new_day: str
) -> None:
    a = bed.processes["region-a"]
    wait_until(lambda: len(_x_values(store)) == 1, what="start-up decrements settled")
    (before,) = _x_values(store)
    early = MemoryStore(store)
    try:  # the split must be in place before midnight, or this proves nothing
        assert early.metadata()["last_decrement_date"] != new_day, "midnight came too early"
    finally:
        early.close()
    lease = bed.lease()
    token = lease["spec"]["leaseTransitions"]
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    lease["spec"].update(
        holderIdentity=f"{namespace}/region-a", renewTime=now, leaseDurationSeconds=120
    )
    kube.apply(lease)
    time.sleep(0.5)
    bed.proxies["region-a"].cut()  # region-a can no longer see the API server
    lease = bed.lease()
    lease["spec"].update(
        holderIdentity=f"{namespace}/region-b",
        renewTime=now,
        leaseTransitions=token + 1,
        leaseDurationSeconds=120,
    )
    kube.apply(lease)
    wait_until(lambda: bed.leading("region-b") is True, 10, "region-b to lead")
    assert bed.leading("region-a") is True  # split brain: both believe they lead
    assert a.health()["scheduler"]["seconds_to_midnight"] > 1, "midnight came too early"
    # midnight: both schedulers try the new day on the shared store
    check = MemoryStore(store)
    try:
        wait_until(
            lambda: check.metadata()["last_decrement_date"] == new_day,
            MIDNIGHT_IN + 15,
            "the midnight decrement",
        )
        time.sleep(1.0)  # the other region's attempt, fenced off
        assert _x_values(store) == {before - 1}  # once, not twice
        meta = check.metadata()
        assert meta["last_decrement_by"] == "region-b"  # the newer fencing token won
        assert meta["fencing_token"] == str(token + 1)
    finally:
        check.close()
    # the stale leader tried and was refused by its token
    assert f"decrement for {new_day} refused: fencing token {token}" in a.log_path.read_text()
    bed.proxies["region-a"].heal()
    # a stalled watch is abandoned within ~15 s, then the Lease is read again
    wait_until(lambda: bed.leading("region-a") is False, 30, "region-a to step down")
