"""``spec.scheduler.control: env`` on the real control plane, with real region processes.

The stand-in for a guide-conforming image is our own runtime in its guide mode: no
``MEMORIA_LEADERSHIP__*`` in its environment, so it runs standalone and honours only
``DISABLE_SCHEDULERS``, read when it starts. No kubelet runs here: the bed's rollout player
(testbed/rollouts.py) plays the deployment controller, replacing a region's process when its
Deployment changes and writing the Deployment's status only once the old process has exited, so
the operator's "rollout complete" check sees the truth. Who runs a scheduler is read from each
process's own /healthz (``scheduler.armed``) every 20 ms, and the decrement is checked where the
guide checks it: ``service_metadata`` in every region's store.

Checklist item 3 across a flip: the regions start on ``Etc/GMT+12``; once the new leader is in
place both processes are moved to ``Etc/GMT-14`` (``PATCH /settings``), a day or two later, so
new dates come due at once. Only the new leader may decrement them: both stores must record
them as its own, and the old leader's log must not mention them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testbed import wait_until
from testbed.cluster import env_of, get
from testbed.harness import OperatorRun, running_operator
from testbed.kube import KubeTarget
from testbed.regions import LeadershipSampler, RegionBed, dates_due, region_bed
from testbed.rollouts import Rollout

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# Longer than a rollout: a new leader restarting for its rollout is briefly unavailable, and a
# process start has taken 13 s on this shared machine. The rollout timeout is longer still, so
# only the test that means to sees a region presumed stopped.
BOUND = 20
ROLLOUT_TIMEOUT = 60
EARLY, LATE = "Etc/GMT+12", "Etc/GMT-14"  # UTC-12 and UTC+14: a day or two apart
ENV = {"control": "env", "timeZone": EARLY, "rolloutTimeoutSeconds": ROLLOUT_TIMEOUT}
NAMES = ("region-a", "region-b")
# one database with the guide's journal table: each region can publish, whoever leads (with the
# guide's Redis topology region-b's broker is a read-only replica until promoted by hand)
BACKEND = "postgres"


def promote(kube: KubeTarget, namespace: str, name: str) -> None:
    kube.kubectl(
        "annotate",
        "mreg",
        name,
        "-n",
        namespace,
        "--overwrite",
        f"memoria.arcafutura.io/promote={time.time():.3f}",
    )


def deployment_env(bed: RegionBed, name: str) -> dict[str, Any]:
    dep = get(bed.kube, "deployment", f"memoria-{name}", bed.namespace)
    assert dep is not None
    return env_of(dep)


def wait_scheduling(bed: RegionBed, name: str, timeout: float = 120) -> None:
    key = f"{bed.namespace}/{name}"
    wait_until(lambda: bed.holder() == key, timeout, f"{key} to hold the Lease")
    wait_until(lambda: bed.scheduling(name) is True, timeout, f"{name}'s timer armed")


def assert_only_decrements_after_the_flip(bed: RegionBed, old: str, new: str) -> None:
    """Checklist item 3 across the flip: move both regions' day forward; the new dates are the
    new leader's alone, in every region's service_metadata."""
    before = bed.store_metadata(new)["last_decrement_date"]
    assert bed.store_metadata(old)["last_decrement_date"] == before  # synced before the flip
    due = dates_due(before, LATE)
    assert due, "moving to UTC+14 must bring at least one new date"
    for name in NAMES:
        status, body = bed.processes[name].request("PATCH", "/settings", {"decrement_tz": LATE})
        assert status == 200, body
    for name in NAMES:
        wait_until(
            lambda n=name: bed.store_metadata(n).get("last_decrement_date") == due[-1],
            30,
            f"{name}'s store to reach {due[-1]}",
        )
    time.sleep(1.0)  # room for a wrong second decrement to show up
    for name in NAMES:
        meta = bed.store_metadata(name)
        assert meta["last_decrement_by"] == new, (name, meta)
    old_log = bed.processes[old].log_path.read_text()
    new_log = bed.processes[new].log_path.read_text()
    for date in due:
        assert f"decrement for {date}:" in new_log
        assert f"decrement for {date}:" not in old_log, f"{old} decremented {date} too"


def rollout_order(bed: RegionBed, off: str, on: str) -> None:
    """The old leader's rollout to DISABLE_SCHEDULERS=true was complete before the new leader's
    rollout to false began."""
    player = bed.rollouts
    assert player is not None

    def recorded() -> tuple[list[Rollout], list[Rollout]]:
        disabled = [r for r in player.rollouts_of(off) if r.disable_schedulers == "true"]
        enabled = [r for r in player.rollouts_of(on) if r.disable_schedulers == "false"]
        return disabled, enabled

    # the player records a rollout once its status is written, a moment after the new
    # process started (which is what the caller waited for)
    wait_until(lambda: all(recorded()), 30, "both rollouts recorded")
    disabled, enabled = recorded()
    assert disabled[-1].finished <= enabled[-1].started, bed.rollouts.history


@pytest.fixture
def env_bed(
    crd_installed: KubeTarget, namespace: str, tmp_path: Path, operator: OperatorRun
) -> Iterator[RegionBed]:
    with region_bed(
        crd_installed,
        namespace,
        tmp_path,
        bound=BOUND,
        operator=operator,
        backend=BACKEND,
        scheduler=dict.fromkeys(NAMES, ENV),
    ) as bed:
        wait_scheduling(bed, "region-a")
        yield bed


def test_env_regions_follow_the_lease_through_disable_schedulers(env_bed: RegionBed) -> None:
    bed = env_bed
    for name in NAMES:
        env = deployment_env(bed, name)
        assert not [k for k in env if k.startswith("MEMORIA_LEADERSHIP__")]
        assert env["DISABLE_SCHEDULERS"] == ("false" if name == "region-a" else "true")
    assert bed.scheduling("region-b") is False
    # the process runs once its rollout did; the status says so at the loop's next step
    wait_until(
        lambda: bed.region("region-a")["status"].get("scheduler", {}).get("phase") == "Enabled",
        what="region-a's status to say Enabled",
    )
    status = bed.region("region-a")["status"]
    assert status["leadership"]["failoverBoundSeconds"] >= BOUND
    assert bed.region("region-b")["status"]["scheduler"]["phase"] == "Disabled"
    assert bed.region("region-b")["status"]["role"] == "standby"
    wait_until(
        lambda: bed.store_metadata("region-b").get("last_decrement_by") == "region-a",
        what="region-b to apply the leader's decrement",
    )


def test_switchover_rolls_the_old_leader_off_before_the_new_one_on(env_bed: RegionBed) -> None:
    bed = env_bed
    with LeadershipSampler(bed, NAMES, armed=True) as sampler:
        promote(bed.kube, bed.namespace, "region-b")
        wait_scheduling(bed, "region-b")
    assert sampler.both_leading() == [], "two decrement timers were armed at once"
    rollout_order(bed, "region-a", "region-b")
    assert deployment_env(bed, "region-a")["DISABLE_SCHEDULERS"] == "true"
    bed.wait_events("region-a", "SchedulerDisabling", "SchedulerDisabled")
    bed.wait_events("region-b", "SwitchoverStarted", "LeadershipAcquired", "SchedulerEnabling")
    wait_until(
        lambda: bed.region("region-b")["status"].get("scheduler", {}).get("phase") == "Enabled",
        what="region-b's status to say Enabled",
    )
    b = bed.region("region-b")["status"]
    assert b["leadership"]["lastTransitionReason"] == "Switchover"
    assert b["scheduler"]["lastRolloutSeconds"] >= 0
    assert bed.region("region-a")["status"]["scheduler"]["phase"] == "Disabled"
    assert_only_decrements_after_the_flip(bed, "region-a", "region-b")


def test_failover_rolls_the_dead_leader_off_first(env_bed: RegionBed) -> None:
    bed = env_bed
    with LeadershipSampler(bed, NAMES, armed=True) as sampler:
        bed.processes["region-a"].kill()
        wait_scheduling(bed, "region-b", timeout=BOUND + 120)
    assert sampler.both_leading() == []
    rollout_order(bed, "region-a", "region-b")
    # region-a came back from its rollout with its scheduler off: no failback, no overlap
    assert bed.scheduling("region-a") is False
    b = bed.region("region-b")["status"]
    assert b["leadership"]["lastTransitionReason"] == "Failover"
    assert "SchedulerPresumedStopped" not in bed.wait_events("region-a", "SchedulerDisabled")
    assert_only_decrements_after_the_flip(bed, "region-a", "region-b")


def test_failover_whose_old_leader_cannot_be_rolled_waits_for_its_timeout(
    env_bed: RegionBed,
) -> None:
    bed = env_bed
    assert bed.rollouts is not None
    bed.kube.kubectl(
        "patch",
        "mreg",
        "region-a",
        "-n",
        bed.namespace,
        "--type=merge",
        "-p",
        '{"spec": {"scheduler": {"rolloutTimeoutSeconds": 5}}}',
    )
    bed.rollouts.hold("region-a")  # region-a's part of the cluster is down: nothing rolls it
    bed.processes["region-a"].kill()
    # the holder is emptied and region-a told to stop, but its rollout never completes
    wait_until(
        lambda: deployment_env(bed, "region-a")["DISABLE_SCHEDULERS"] == "true",
        BOUND + 30,
        "region-a's Deployment rolled to true",
    )
    assert bed.holder() is None
    wait_until(  # the status follows the Deployment
        lambda: bed.region("region-a")["status"]["scheduler"]["phase"] == "Disabling",
        10,
        "region-a's status to say Disabling",
    )
    wait_scheduling(bed, "region-b", timeout=120)
    # granted only once region-a was presumed stopped (down, rollout timed out): said so
    bed.wait_events("region-a", "SchedulerPresumedStopped")
    assert bed.region("region-a")["status"]["scheduler"]["phase"] == "Disabling"
    bed.rollouts.release("region-a")  # it comes back: with its scheduler off
    wait_until(
        lambda: bed.region("region-a")["status"].get("scheduler", {}).get("phase") == "Disabled",
        60,
        "region-a rolled out with its scheduler off",
    )
    assert bed.scheduling("region-a") is False
    assert bed.holder() == f"{bed.namespace}/region-b"


def test_operator_restarted_mid_flip_finishes_it_in_order(
    crd_installed: KubeTarget, namespace: str, tmp_path: Path
) -> None:
    scheduler = dict.fromkeys(NAMES, ENV)
    with region_bed(
        crd_installed, namespace, tmp_path, bound=BOUND, backend=BACKEND, scheduler=scheduler
    ) as bed:
        with LeadershipSampler(bed, NAMES, armed=True) as sampler:
            with running_operator(crd_installed):
                bed.bring_up()
                wait_scheduling(bed, "region-a")
                assert bed.rollouts is not None
                bed.rollouts.hold("region-a")  # the flip stops half-way
                promote(crd_installed, namespace, "region-b")
                wait_until(
                    lambda: deployment_env(bed, "region-a")["DISABLE_SCHEDULERS"] == "true",
                    30,
                    "the handover to start (region-a told to stop)",
                )
            # no operator now; region-a's old process still runs its scheduler
            assert bed.holder() is None
            assert bed.scheduling("region-a") is True
            with running_operator(crd_installed):
                time.sleep(3)  # a new operator, several ticks: it must keep waiting
                assert bed.holder() is None
                assert deployment_env(bed, "region-b")["DISABLE_SCHEDULERS"] == "true"
                assert bed.scheduling("region-b") is False
                bed.rollouts.release("region-a")
                wait_scheduling(bed, "region-b")
        assert sampler.both_leading() == []
        rollout_order(bed, "region-a", "region-b")
        assert bed.scheduling("region-a") is False
        assert_only_decrements_after_the_flip(bed, "region-a", "region-b")


def test_mixed_group_lease_and_env_regions_take_turns(
    crd_installed: KubeTarget, namespace: str, tmp_path: Path, operator: OperatorRun
) -> None:
    scheduler = {"region-a": {"timeZone": EARLY}, "region-b": ENV}
    with region_bed(
        crd_installed, namespace, tmp_path, bound=BOUND, operator=operator, scheduler=scheduler
    ) as bed:
        bed.wait_leader("region-a")
        assert "MEMORIA_LEADERSHIP__LEASE_NAME" in deployment_env(bed, "region-a")
        assert deployment_env(bed, "region-b")["DISABLE_SCHEDULERS"] == "true"
        with LeadershipSampler(bed, NAMES, armed=True) as sampler:
            promote(crd_installed, namespace, "region-b")  # lease -> env
            wait_scheduling(bed, "region-b")
            assert bed.scheduling("region-a") is False
            promote(crd_installed, namespace, "region-a")  # env -> lease
            wait_scheduling(bed, "region-a")
            wait_until(
                lambda: deployment_env(bed, "region-b")["DISABLE_SCHEDULERS"] == "true",
                what="region-b rolled off",
            )
        assert sampler.both_leading() == []
        assert bed.scheduling("region-b") is False
        bed.wait_events("region-b", "SchedulerDisabled")
