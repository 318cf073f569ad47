"""``spec.scheduler.control: env``: what is rendered, when a rollout counts as complete, the order
decide() keeps (no grant while another env region may still run its scheduler), and the writes
of the reconciler and the leadership loop against the in-memory Kube (testbed.fakekube)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from memoria_operator.health import Health
from memoria_operator.kube import Conflict
from memoria_operator.leadership import GroupView, decide, micro_time
from memoria_operator.leadership.envcontrol import (
    EnvScheduler,
    SchedulerPhase,
    failover_bound,
    observe,
    rollout,
    scheduler_status,
    switch_patch,
)
from memoria_operator.leadership.switches import SchedulerSwitches
from memoria_operator.model import Region
from memoria_operator.reconcile import Reconciler
from memoria_operator.render import deployment_scheduler_on, render_deployment, render_env
from testbed.fakekube import FakeKube
from testbed.regions import region_manifest

from .test_decide import HANDOVER_TO, MONO, NOW, NS, REASON, key

HANDOVER_FROM = "memoria.arcafutura.io/handover-from"
HANDOVER_STARTED = "memoria.arcafutura.io/handover-started"


def region(
    name: str,
    *,
    control: str = "env",
    role: str = "standby",
    priority: int = 100,
    bound: int = 10,
    timeout: int = 60,
    status: dict[str, Any] | None = None,
    enabled: bool = True,
) -> Region:
    body = region_manifest(
        name,
        role=role,
        priority=priority,
        scheduler={"control": control, "rolloutTimeoutSeconds": timeout, "enabled": enabled},
        failover={"unhealthyAfterSeconds": bound},
    )
    body["metadata"].update(namespace=NS, uid=f"uid-{name}", generation=1)
    body["status"] = status or {}
    return Region.from_body(body)


def healthy() -> Health:
    return Health(True, "ok", MONO - 100, "2026-01-01T11:58:20Z", None)


def unhealthy(for_seconds: float) -> Health:
    return Health(False, "down", MONO - for_seconds, "2026-01-01T11:59:00Z", None)


def switch(on: bool, rolled_out: bool = True, changed_ago: float | None = None) -> EnvScheduler:
    changed = NOW - dt.timedelta(seconds=changed_ago) if changed_ago is not None else None
    return EnvScheduler(on=on, rolled_out=rolled_out, detail="test", changed=changed)


def lease(
    holder: str | None, *, renewed_ago: float = 0.5, annotations: dict[str, str] | None = None
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "leaseDurationSeconds": 3,
        "leaseTransitions": 4,
        "renewTime": micro_time(NOW - dt.timedelta(seconds=renewed_ago)),
    }
    if holder:
        spec["holderIdentity"] = holder
    return {"metadata": {"annotations": annotations or {}}, "spec": spec}


def handover(to: str, frm: str, reason: str = "Switchover", **kw: Any) -> dict[str, Any]:
    annotations = {
        HANDOVER_TO: key(to),
        HANDOVER_FROM: key(frm),
        HANDOVER_STARTED: micro_time(NOW),
        REASON: reason,
    }
    return lease(None, annotations=annotations, **kw)


def view(
    regions: list[Region],
    health: dict[str, Health],
    lease_: dict[str, Any] | None,
    schedulers: dict[str, EnvScheduler],
) -> GroupView:
    return GroupView(
        namespace=NS,
        group="default",
        lease=lease_,
        regions={r.key: r for r in regions},
        health={key(n): h for n, h in health.items()},
        now=NOW,
        mono=MONO,
        renew_interval=1.0,
        schedulers={key(n): s for n, s in schedulers.items()},
    )


# == rendering ================================================================================


def env_map(r: Region, on: bool = False) -> dict[str, Any]:
    return {e["name"]: e.get("value") for e in render_env(r, on)}


def test_env_regions_get_no_leadership_env_and_the_switch_off_unless_told() -> None:
    r = region("a")
    env = env_map(r)
    assert not [n for n in env if n.startswith("MEMORIA_LEADERSHIP__")]
    assert env["DISABLE_SCHEDULERS"] == "true"
    assert env_map(r, on=True)["DISABLE_SCHEDULERS"] == "false"
    # spec.scheduler.enabled: false is a hard opt-out whatever the Lease says
    assert env_map(region("a", enabled=False), on=True)["DISABLE_SCHEDULERS"] == "true"


def test_lease_regions_render_as_before() -> None:
    env = env_map(region("a", control="lease"))
    assert env["DISABLE_SCHEDULERS"] == "false"
    assert env["MEMORIA_LEADERSHIP__IDENTITY"] == key("a")


def test_env_deployment_runs_the_image_as_it_is() -> None:
    dep = render_deployment(region("a"), "their/memoria:1", scheduler_on=True)
    pod = dep["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert "command" not in container and "args" not in container
    assert container["readinessProbe"]["tcpSocket"] == {"port": "http"}
    assert pod["automountServiceAccountToken"] is False
    assert deployment_scheduler_on(dep) is True
    lease_dep = render_deployment(region("a", control="lease"), "x")
    assert deployment_scheduler_on(lease_dep) is None  # its pods follow the Lease


# == rollout completeness =====================================================================


def deployment(
    on: bool, *, generation: int = 2, observed: int = 2, replicas: int = 1, updated: int = 1
) -> dict[str, Any]:
    dep = render_deployment(region("a"), "img", scheduler_on=on)
    dep["metadata"].update(generation=generation, resourceVersion="7")
    dep["status"] = {
        "observedGeneration": observed,
        "replicas": replicas,
        "updatedReplicas": updated,
    }
    return dep


def pod(name: str, on: bool, phase: str = "Running", **meta: Any) -> dict[str, Any]:
    container = render_deployment(region("a"), "img", scheduler_on=on)["spec"]["template"]["spec"]
    return {"metadata": {"name": name, **meta}, "spec": container, "status": {"phase": phase}}


def test_rollout_complete_only_when_no_pod_of_the_old_template_remains() -> None:
    assert rollout(deployment(False), [pod("new", False)])[0] is True
    done, why = rollout(deployment(False), [pod("new", False), pod("old", True)])
    assert not done and "old" in why
    # a terminating pod of the old template still counts: its process may still run
    terminating = pod("old", True, deletionTimestamp="2026-01-01T00:00:00Z")
    assert rollout(deployment(False), [terminating])[0] is False
    # a pod that has exited does not
    assert rollout(deployment(False), [pod("old", True, phase="Failed")])[0] is True


def test_rollout_waits_for_the_deployment_controller() -> None:
    assert rollout(deployment(False, observed=1), [])[0] is False
    assert rollout(deployment(False, replicas=2, updated=1), [])[0] is False
    assert rollout(None, [])[0] is True
    assert rollout(None, [pod("orphan", True)])[0] is False


def test_observe_reads_the_last_change_from_status() -> None:
    state = observe(deployment(True), [], {"scheduler": {"lastChangeTime": micro_time(NOW)}})
    assert (state.on, state.rolled_out, state.changed) == (True, True, NOW)
    assert state.phase is SchedulerPhase.ENABLED


# == the order decide() keeps =================================================================


def test_switchover_waits_for_the_old_leaders_rollout() -> None:
    a, b = region("a", role="leader"), region("b")
    health = {"a": healthy(), "b": healthy()}
    rolling = view(
        [a, b], health, handover("b", "a"), {"a": switch(False, False), "b": switch(False)}
    )
    d = decide(rolling)
    assert d.kind == "keep"
    assert "waiting for prod/a's scheduler to stop" in d.message
    # the Lease's expiry proves nothing about an image that never reads it
    expired = view(
        [a, b],
        health,
        handover("b", "a", renewed_ago=30),
        {"a": switch(False, False), "b": switch(False)},
    )
    assert decide(expired).kind == "keep"
    done = view([a, b], health, handover("b", "a"), {"a": switch(False), "b": switch(False)})
    d = decide(done)
    assert (d.kind, d.holder, d.reason) == ("acquire", key("b"), "Switchover")


def test_switchover_with_the_old_switch_still_on_waits() -> None:
    a, b = region("a", role="leader"), region("b")
    d = decide(
        view(
            [a, b],
            {"a": healthy(), "b": healthy()},
            handover("b", "a"),
            {"a": switch(True), "b": switch(False)},
        )
    )
    assert d.kind == "keep" and "DISABLE_SCHEDULERS=false is still" in d.message


def test_failover_of_an_env_leader_empties_the_holder_first() -> None:
    a, b = region("a", role="leader", bound=5), region("b")
    d = decide(
        view(
            [a, b],
            {"a": unhealthy(6), "b": healthy()},
            lease(key("a"), renewed_ago=10),
            {"a": switch(True), "b": switch(False)},
        )
    )
    assert (d.kind, d.holder, d.reason) == ("handover", key("b"), "Failover")


def test_failover_whose_old_leader_cannot_be_rolled_waits_for_the_rollout_timeout() -> None:
    a, b = region("a", role="leader", bound=5, timeout=60), region("b")
    health = {"a": unhealthy(30), "b": healthy()}
    stuck = {"a": switch(False, False, changed_ago=20), "b": switch(False)}
    d = decide(view([a, b], health, handover("b", "a", "Failover", renewed_ago=30), stuck))
    assert d.kind == "keep"
    timed_out = {"a": switch(False, False, changed_ago=61), "b": switch(False)}
    d = decide(view([a, b], health, handover("b", "a", "Failover", renewed_ago=30), timed_out))
    assert (d.kind, d.holder) == ("acquire", key("b"))
    assert d.presumed_stopped == [key("a")]
    # a healthy old leader is never presumed stopped, however long its rollout takes
    alive = {"a": healthy(), "b": healthy()}
    d = decide(view([a, b], alive, handover("b", "a", renewed_ago=30), timed_out))
    assert d.kind == "keep"


def test_a_dead_old_leader_rolled_out_lets_the_failover_through_at_once() -> None:
    a, b = region("a", role="leader", bound=5), region("b")
    d = decide(
        view(
            [a, b],
            {"a": unhealthy(6), "b": healthy()},
            handover("b", "a", "Failover"),
            {"a": switch(False, changed_ago=1), "b": switch(False)},
        )
    )
    assert (d.kind, d.holder, d.reason) == ("acquire", key("b"), "Failover")
    assert d.presumed_stopped == []


def test_bootstrap_waits_for_every_other_env_region_to_be_off() -> None:
    a, b = region("a", role="leader"), region("b")
    health = {"a": healthy(), "b": healthy()}
    d = decide(view([a, b], health, None, {"a": switch(False), "b": switch(False, False)}))
    assert d.kind == "keep"
    d = decide(view([a, b], health, None, {"a": switch(False)}))  # b not read yet
    assert d.kind == "keep"
    d = decide(view([a, b], health, None, {"a": switch(False), "b": switch(False)}))
    assert (d.kind, d.holder) == ("acquire", key("a"))


def test_mixed_group_lease_leader_to_env_standby_and_back() -> None:
    a, b = region("a", control="lease", role="leader"), region("b")
    health = {"a": healthy(), "b": healthy()}
    # lease -> env: the old lease leader stops by the Lease (its expiry or its /healthz)
    d = decide(view([a, b], health, handover("b", "a", renewed_ago=30), {"b": switch(False)}))
    assert (d.kind, d.holder) == ("acquire", key("b"))
    # env -> lease: the env leader's rollout gates the lease region's grant
    a2, b2 = region("a"), region("b", control="lease")
    rolling = {"a": switch(False, False)}
    d = decide(view([a2, b2], health, handover("b", "a", renewed_ago=30), rolling))
    assert d.kind == "keep"
    d = decide(view([a2, b2], health, handover("b", "a"), {"a": switch(False)}))
    assert (d.kind, d.holder) == ("acquire", key("b"))


def test_failover_bound_adds_the_rollouts() -> None:
    a = region("a", role="leader", bound=10, timeout=60)
    b = region("b", status={"scheduler": {"lastRolloutSeconds": 4.0}})
    c = region("c", control="lease")
    v = view([a, b, c], {}, None, {})
    # max(10, 3) + a's timeout 60 + b's measured 4 + two retries of 1 s
    assert failover_bound(v, key("a"), lease_duration=3, retry_interval=1) == 76.0
    # from the lease region: no rollout of its own; a never rolled out yet, so its timeout
    # stands for its rollout: 10 + 60 + 2
    assert failover_bound(v, key("c"), lease_duration=3, retry_interval=1) == 72.0
    assert failover_bound(v, None, lease_duration=3, retry_interval=1) is None


def test_each_phase_is_reported_once_with_the_rollout_time() -> None:
    r = region("a")
    wanted, events = scheduler_status(r, switch(False, False, changed_ago=0), NOW, "Enabled")
    assert wanted["phase"] == "Disabling" and wanted["disableSchedulers"] is True
    assert [e[1] for e in events] == ["SchedulerDisabling"]
    wanted, events = scheduler_status(r, switch(False, True, changed_ago=7.5), NOW, "Disabling")
    assert wanted["lastRolloutSeconds"] == 7.5
    assert [e[1] for e in events] == ["SchedulerDisabled"]
    assert scheduler_status(r, switch(False, True, changed_ago=9), NOW, "Disabled")[1] == []


# == writes: the reconciler never flips, the loop flips in order ===============================


def put_region(kube: FakeKube, name: str, **spec: Any) -> dict[str, Any]:
    manifest = region_manifest(name, scheduler={"control": "env"}, **spec)
    manifest["metadata"]["namespace"] = NS
    return kube.put(manifest)


def dep(kube: FakeKube, name: str) -> dict[str, Any]:
    return kube.find("apps/v1", "Deployment", NS, f"memoria-{name}")


def test_the_reconciler_keeps_the_switch_the_loop_set() -> None:
    kube = FakeKube()
    body = put_region(kube, "a")
    reconciler = Reconciler(kube, "img")
    reconciler.reconcile(body)
    assert deployment_scheduler_on(dep(kube, "a")) is False  # created off
    current = dep(kube, "a")
    kube.merge_patch(
        f"/apis/apps/v1/namespaces/{NS}/deployments/memoria-a", switch_patch(current, True)
    )
    reconciler.reconcile(body)
    assert deployment_scheduler_on(dep(kube, "a")) is True  # not undone


def test_a_flip_over_a_stale_read_is_a_conflict() -> None:
    kube = FakeKube()
    Reconciler(kube, "img").reconcile(put_region(kube, "a"))
    stale = dep(kube, "a")
    path = f"/apis/apps/v1/namespaces/{NS}/deployments/memoria-a"
    kube.merge_patch(path, switch_patch(stale, True))
    with pytest.raises(Conflict):
        kube.merge_patch(path, switch_patch(stale, False))


def test_the_loop_turns_the_old_off_before_the_new_on() -> None:
    kube = FakeKube()
    reconciler = Reconciler(kube, "img")
    regions = {}
    for name in ("a", "b"):
        body = put_region(kube, name)
        reconciler.reconcile(body)
        regions[key(name)] = Region.from_body(body)
    path_a = f"/apis/apps/v1/namespaces/{NS}/deployments/memoria-a"
    kube.merge_patch(path_a, switch_patch(dep(kube, "a"), True))  # a led
    switches = SchedulerSwitches(kube)
    states = switches.observe(regions)
    assert states[key("a")].on is True and states[key("b")].on is False
    v = GroupView(
        namespace=NS,
        group="default",
        lease=None,
        regions=regions,
        health={},
        now=NOW,
        mono=MONO,
        renew_interval=1.0,
        schedulers=states,
    )
    before = len(kube.writes())
    switches.apply(v, lease(key("b")))
    flips = [w for w in kube.writes()[before:] if "deployments" in w[1]]
    assert [w[1].rsplit("/", 1)[1] for w in flips] == ["memoria-a", "memoria-b"]
    assert deployment_scheduler_on(dep(kube, "a")) is False
    assert deployment_scheduler_on(dep(kube, "b")) is True
    assert v.schedulers[key("b")].changed == NOW
    _, events = switches.status(v, Region.from_body(kube.find(*REGION, NS, "b")))
    assert [e.reason for e in events] == ["SchedulerEnabling"]


REGION = ("memoria.arcafutura.io/v1alpha1", "MemoriaRegion")


def test_a_target_that_misses_a_probe_during_a_rollout_is_waited_for_not_dropped() -> None:
    a, b = region("a", role="leader"), region("b", bound=10)
    states = {"a": switch(False), "b": switch(False)}
    blip = view([a, b], {"a": healthy(), "b": unhealthy(2)}, handover("b", "a"), states)
    d = decide(blip)
    assert d.kind == "keep" and "waiting for prod/b to answer again" in d.message
    gone = view([a, b], {"a": healthy(), "b": unhealthy(11)}, handover("b", "a"), states)
    assert decide(gone).kind == "release"
