"""``spec.scheduler.control: env`` with real rollouts: pods on the test bed's node, the operator
installed by Helm, and nothing here writing a status.

Both regions run our image in its guide mode (no ``MEMORIA_LEADERSHIP__*``, so each runs
standalone and honours only ``DISABLE_SCHEDULERS``, read when the container starts). Every
change of leadership is therefore a real rollout (Recreate: the region's volume holds its
SQLite store): the deployment controller deletes the old pod, the kubelet stops it, and a new
pod starts from the new template. While a flip runs, a thread samples every Ready pod's own
/healthz (``scheduler.armed``) and records any moment when pods of both regions had their
decrement timer armed. The decrement is checked where the guide checks it, ``service_metadata``
in each region's store (read inside the pod), after moving both regions' day forward.

The tests of this module run in order and share the regions.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from testbed.kube import KubeTarget
from testbed.node import RunningNode
from testbed.onnode import (
    PROMOTE_ANNOTATION,
    SCHEDULER_LEASE,
    OperatorRelease,
    container_pid,
    deploy_redis_pair,
    ensure_redis_image,
    eventually,
    http,
    lease_holder,
    logs,
    ready_pod,
    region_manifest,
    region_pods,
    wait_for,
    wait_namespace_ready,
)
from testbed.regions import dates_due

# each test waits on several real rollouts: beside the rest of CI one took over 300 s
pytestmark = [pytest.mark.e2e, pytest.mark.node, pytest.mark.timeout(900)]

BOUND = 30  # spec.failover.unhealthyAfterSeconds: above a region pod's restart on the node
ROLLOUT_TIMEOUT = 60
EARLY, LATE = "Etc/GMT+12", "Etc/GMT-14"  # UTC-12 and UTC+14: a day or two apart
REGIONS = ("region-a", "region-b")
STORE = "sqlite:////var/lib/memoria/memoria.db"
READ_METADATA = (
    "import json; from memoria.store import MemoryStore; "
    f"s = MemoryStore('{STORE}'); print(json.dumps(s.metadata())); s.close()"
)


def switch_of(spec: dict[str, Any]) -> str | None:
    """DISABLE_SCHEDULERS in a pod spec or a pod template spec."""
    for entry in spec["containers"][0].get("env") or []:
        if entry["name"] == "DISABLE_SCHEDULERS":
            return str(entry.get("value"))
    return None


def armed(pod_ip: str) -> bool:
    """The pod's own /healthz says its decrement timer is armed."""
    try:
        status, body = http("GET", f"http://{pod_ip}:8080/healthz", timeout=1.0)
    except OSError:
        return False
    scheduler = (body.get("scheduler") or {}) if isinstance(body, dict) else {}
    return status == 200 and bool(scheduler.get("armed"))


@dataclass
class ArmedSampler:
    """Every ``interval`` s, each region's pods that run: is any pod's timer armed?"""

    kube: KubeTarget
    ns: str
    interval: float = 0.2
    overlaps: list[dict[str, list[str]]] = field(default_factory=list)
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _armed_pods(self, region: str) -> list[str]:
        found = []
        for pod in region_pods(self.kube, self.ns, region):
            ip = (pod.get("status") or {}).get("podIP")
            if ip and armed(ip):
                found.append(pod["metadata"]["name"])
        return found

    def _run(self) -> None:
        while not self._stop.is_set():
            seen = {region: self._armed_pods(region) for region in REGIONS}
            self.samples += 1
            if all(seen.values()):
                self.overlaps.append(seen)
            self._stop.wait(self.interval)

    def __enter__(self) -> ArmedSampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)


@dataclass
class EnvDrill:
    kube: KubeTarget
    node: RunningNode
    ns: str

    def key(self, region: str) -> str:
        return f"{self.ns}/{region}"

    def holder(self) -> str | None:
        return lease_holder(self.kube, self.ns, SCHEDULER_LEASE)

    def region(self, name: str) -> dict[str, Any]:
        found: dict[str, Any] = self.kube.get_json("mreg", name, "-n", self.ns)
        return found

    def deployment(self, name: str) -> dict[str, Any]:
        found: dict[str, Any] = self.kube.get_json("deployment", f"memoria-{name}", "-n", self.ns)
        return found

    def switch(self, name: str) -> str | None:
        return switch_of(self.deployment(name)["spec"]["template"]["spec"])

    def events(self, name: str) -> list[str]:
        items = self.kube.get_json(
            "events", "-n", self.ns, f"--field-selector=involvedObject.name={name}"
        )["items"]
        return [e["reason"] for e in items]

    def pod(self, name: str, timeout: float = 240) -> dict[str, Any]:
        found: dict[str, Any] = eventually(
            lambda: ready_pod(self.kube, self.ns, name), timeout, f"a Ready pod of {name}", 0.5
        )
        return found

    def leads(self, name: str) -> bool:
        """The Lease names ``name``, its Deployment says DISABLE_SCHEDULERS=false and is
        rolled out (status.scheduler.phase Enabled), and its Ready pod's timer is armed."""
        if self.holder() != self.key(name) or self.switch(name) != "false":
            return False
        if (self.region(name).get("status") or {}).get("scheduler", {}).get("phase") != "Enabled":
            return False
        pod = ready_pod(self.kube, self.ns, name)
        return pod is not None and armed(pod["status"]["podIP"])

    def settled(self, leader: str, timeout: float = 300) -> None:
        standby = "region-b" if leader == "region-a" else "region-a"

        def ok() -> bool:
            if not self.leads(leader) or self.switch(standby) != "true":
                return False
            status = self.region(standby).get("status") or {}
            return status.get("scheduler", {}).get("phase") == "Disabled"

        eventually(ok, timeout, f"{leader} leading, {standby} rolled off", 1.0)

    def no_pod_with(self, name: str, value: str) -> bool:
        """No pod of ``name`` (terminating ones included) carries DISABLE_SCHEDULERS=value."""
        pods = self.kube.get_json(
            "pods", "-n", self.ns, "-l", f"app.kubernetes.io/instance={name}"
        )["items"]
        return all(switch_of(p["spec"]) != value for p in pods)

    def metadata(self, name: str) -> dict[str, str]:
        pod = self.pod(name)["metadata"]["name"]
        out = self.kube.kubectl("exec", "-n", self.ns, pod, "--", "python", "-c", READ_METADATA)
        found: dict[str, str] = json.loads(out.stdout)
        return found

    def promote(self, name: str) -> None:
        self.kube.kubectl(
            "annotate",
            "mreg",
            name,
            "-n",
            self.ns,
            "--overwrite",
            f"{PROMOTE_ANNOTATION}={time.time():.3f}",
        )


def env_manifest(name: str, role: str, redis_ip: str, priority: int) -> dict[str, Any]:
    manifest = region_manifest(name, role, redis_ip, priority=priority, unhealthy_after=BOUND)
    manifest["spec"]["scheduler"] = {
        "control": "env",
        "timeZone": EARLY,
        "rolloutTimeoutSeconds": ROLLOUT_TIMEOUT,
    }
    return manifest


@pytest.fixture(scope="module")
def drill(node_cluster: RunningNode, node_operator: OperatorRelease) -> Iterator[EnvDrill]:
    kube = node_cluster.kube
    ns = kube.create_namespace("envctl")
    wait_namespace_ready(kube, ns)
    redis = ensure_redis_image(node_cluster)
    primary, _replica = deploy_redis_pair(kube, ns, redis.ref)
    # both regions on the primary: whoever leads can publish its decrement to the other
    kube.apply(env_manifest("region-a", "leader", primary, 200), ns)
    kube.apply(env_manifest("region-b", "standby", primary, 100), ns)
    d = EnvDrill(kube, node_cluster, ns)
    try:
        yield d
    finally:
        kube.kubectl("delete", "mreg", "--all", "-n", ns, "--wait=false", check=False)
        kube.delete_namespace(ns)


def only_the_new_leader_decrements(drill: EnvDrill, old: str, new: str) -> None:
    """Checklist item 3 across the flip: both regions' day moves forward; the new dates are
    the new leader's alone in every region's service_metadata, and absent from the old
    leader's log."""
    before = drill.metadata(new)["last_decrement_date"]
    due = dates_due(before, LATE)
    if not due:
        # an earlier flip of this module already moved the day to UTC+14's, and no zone is
        # later: no new date can come, so what is left to check is that no date ran twice
        for name in REGIONS:
            assert drill.metadata(name)["last_decrement_date"] == before, name
        return
    pods = {name: drill.pod(name) for name in REGIONS}
    for pod in pods.values():
        status, body = http(
            "PATCH", f"http://{pod['status']['podIP']}:8080/settings", {"decrement_tz": LATE}
        )
        assert status == 200, body
    for name in REGIONS:
        eventually(
            lambda n=name: drill.metadata(n).get("last_decrement_date") == due[-1],
            60,
            f"{name}'s store to reach {due[-1]}",
            1.0,
        )
    time.sleep(2)
    for name in REGIONS:
        meta = drill.metadata(name)
        assert meta["last_decrement_by"] == new, (name, meta)
    old_log = logs(drill.kube, drill.ns, pods[old]["metadata"]["name"])
    new_log = logs(drill.kube, drill.ns, pods[new]["metadata"]["name"])
    for date in due:
        assert f"decrement for {date}:" in new_log
        assert f"decrement for {date}:" not in old_log


def test_env_regions_run_in_guide_mode_and_only_the_holder_is_switched_on(
    drill: EnvDrill,
) -> None:
    for region in REGIONS:
        eventually(
            lambda r=region: (
                drill.kube.kubectl(
                    "get", "deployment", f"memoria-{r}", "-n", drill.ns, check=False
                ).returncode
                == 0
            ),
            60,
            f"the Deployment of {region}",
        )
        wait_for(drill.kube, drill.ns, f"deployment/memoria-{region}", "condition=Available", 300)
    drill.settled("region-a")
    for region in REGIONS:
        pod = drill.pod(region)
        container = pod["spec"]["containers"][0]
        names = [e["name"] for e in container.get("env") or []]
        assert not [n for n in names if n.startswith("MEMORIA_LEADERSHIP__")]
        assert "command" not in container  # the image's own entrypoint
        assert pod["spec"].get("automountServiceAccountToken") is False
        assert container["readinessProbe"]["tcpSocket"]["port"] == "http"
    assert drill.switch("region-a") == "false" and drill.switch("region-b") == "true"
    assert not armed(drill.pod("region-b")["status"]["podIP"])
    bound = drill.region("region-a")["status"]["leadership"]["failoverBoundSeconds"]
    assert bound >= BOUND + ROLLOUT_TIMEOUT
    print(f"reported failover bound: {bound}s")


def test_switchover_rolls_the_old_leader_off_before_the_new_one_on(drill: EnvDrill) -> None:
    drill.settled("region-a")
    with ArmedSampler(drill.kube, drill.ns) as sampler:
        drill.promote("region-b")
        drill.settled("region-b")
    assert sampler.samples > 0
    assert sampler.overlaps == [], sampler.overlaps
    assert drill.no_pod_with("region-a", "false")
    for reason in ("SchedulerDisabling", "SchedulerDisabled"):
        assert reason in drill.events("region-a")
    for reason in ("SwitchoverStarted", "LeadershipAcquired", "SchedulerEnabling"):
        assert reason in drill.events("region-b")
    status = drill.region("region-b")["status"]
    assert status["leadership"]["lastTransitionReason"] == "Switchover"
    print(f"region-b's rollout took {status['scheduler'].get('lastRolloutSeconds')}s")
    only_the_new_leader_decrements(drill, "region-a", "region-b")


def test_a_frozen_leader_is_rolled_off_before_the_standby_is_switched_on(
    drill: EnvDrill,
) -> None:
    """The frozen pod ignores SIGTERM: the kubelet kills it after the grace period, and until
    then it is a pod of the old template, so the standby must wait."""
    drill.settled("region-b")
    pod = drill.pod("region-b")
    pid = container_pid(drill.node, pod)
    with ArmedSampler(drill.kube, drill.ns) as sampler:
        os.kill(pid, signal.SIGSTOP)
        try:
            drill.settled("region-a", BOUND + ROLLOUT_TIMEOUT + 240)
        finally:
            with contextlib.suppress(ProcessLookupError):  # the kubelet killed it, as it should
                os.kill(pid, signal.SIGCONT)
    assert sampler.overlaps == [], sampler.overlaps
    assert drill.no_pod_with("region-b", "false")
    assert drill.region("region-a")["status"]["leadership"]["lastTransitionReason"] == "Failover"
    assert "SchedulerDisabled" in drill.events("region-b")
    only_the_new_leader_decrements(drill, "region-b", "region-a")


def test_operator_restarted_mid_flip_finishes_it(
    drill: EnvDrill, node_operator: OperatorRelease
) -> None:
    drill.settled("region-a")
    operator = ["deployment", node_operator.deployment, "-n", node_operator.namespace]
    with ArmedSampler(drill.kube, drill.ns) as sampler:
        drill.promote("region-b")
        eventually(lambda: drill.switch("region-a") == "true", 60, "the flip to start", 0.2)
        drill.kube.kubectl("scale", *operator, "--replicas=0")
        eventually(
            lambda: (
                not drill.kube.get_json(
                    "pods",
                    "-n",
                    node_operator.namespace,
                    "-l",
                    f"app.kubernetes.io/instance={node_operator.release}",
                )["items"]
            ),
            120,
            "the operator gone",
            1.0,
        )
        # half-way or done: the new operator starts from the Lease and the regions' status
        print(f"holder while no operator ran: {drill.holder()!r}")
        drill.kube.kubectl("scale", *operator, "--replicas=1")
        wait_for(
            drill.kube,
            node_operator.namespace,
            f"deployment/{node_operator.deployment}",
            "condition=Available",
            180,
        )
        drill.settled("region-b")
    assert sampler.overlaps == [], sampler.overlaps
    assert drill.no_pod_with("region-a", "false")
