"""The guide's Validation Checklist on real pods, for both backends.

Each backend gets its own namespace: the brokers as pods (Redis: region-a's primary and
region-b's ``--replicaof`` replica, the guide's topology; PostgreSQL: one server with the guide's
``infra.memoria_sync_events`` journal), then two MemoriaRegions from our image installed by the
Helm-installed operator. The four items run in order on that pair:

1. sync heartbeat: a write in region-a reaches region-b, and the broker holds its event;
2. privacy: y=-12 stays out with floor 0 (and 12 above region-b's ceiling of 10);
3. scheduler control: only the leader decrements, read from ``service_metadata`` in both pods;
4. the failover drill: region-a shut down (frozen; with Redis its broker goes too), region-b
   leads and its writes flow (its Redis replica promoted by region-b itself), the listeners
   reconnect (counted in ``/healthz``), region-a comes back as a standby and catches up, and
   every write answered 201 is found in both regions;
5. ``kubectl memoria status`` reads both regions' /healthz through the service proxy.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator

import pytest

from testbed.drill import Drill
from testbed.node import RunningNode
from testbed.onnode import (
    OperatorRelease,
    container_pid,
    deploy_postgres,
    deploy_redis_pair,
    ensure_service_image,
    eventually,
    http,
    region_manifest,
    wait_for,
    wait_namespace_ready,
)
from testbed.plugin import kubectl_memoria, plugin_bin

pytestmark = [pytest.mark.e2e, pytest.mark.node]

BOUND = 5  # spec.failover.unhealthyAfterSeconds
SLACK = 8.0  # a ceiling for a loaded 2-core machine; the figures come from bench/


class Pair(Drill):
    backend: str = "redis"

    def exec_broker(self, deployment: str, *command: str) -> str:
        return self.kube.kubectl(
            "exec", "-n", self.ns, f"deploy/{deployment}", "--", *command
        ).stdout

    def journal(self, redis: str) -> str:
        """The Stream our regions write beside the channel, as ``redis-cli`` prints it."""
        return self.exec_broker(redis, "redis-cli", "xrange", "memoria-sync:journal", "-", "+")

    def psql(self, sql: str) -> str:
        return self.exec_broker(
            "postgres", "psql", "-h", "/tmp", "-U", "memoria", "-d", "memoria", "-Atc", sql
        )


@pytest.fixture(scope="module", params=["redis", "postgres"])
def pair(
    request: pytest.FixtureRequest, node_cluster: RunningNode, node_operator: OperatorRelease
) -> Iterator[Pair]:
    backend = request.param
    kube = node_cluster.kube
    ns = kube.create_namespace(f"checklist-{backend}")
    wait_namespace_ready(kube, ns)
    image = ensure_service_image(node_cluster, backend).ref
    if backend == "redis":
        broker_a, broker_b = deploy_redis_pair(kube, ns, image)
    else:
        broker_a = broker_b = deploy_postgres(kube, ns, image)
    common = {"unhealthy_after": BOUND, "backend": backend}
    kube.apply(region_manifest("region-a", "leader", broker_a, priority=200, **common), ns)
    kube.apply(
        region_manifest("region-b", "standby", broker_b, priority=100, ceiling=10, **common), ns
    )
    p = Pair(kube, node_cluster, ns)
    p.backend = backend
    try:
        p.settled("region-a", 300)
        yield p
    finally:
        kube.kubectl("delete", "mreg", "--all", "-n", ns, "--wait=false", check=False)
        kube.delete_namespace(ns)


def test_1_sync_heartbeat(pair: Pair) -> None:
    mid = pair.write("region-a", "heartbeat from region A", y=3)
    pair.wait_all("region-b", [mid], 30)
    if pair.backend == "redis":
        # region-b reads a replica, which holds the event region-a published on its primary
        role = pair.exec_broker("redis-b", "redis-cli", "role").split()
        assert role[0] == "slave", role
        assert mid in pair.journal("redis-b")
    else:
        origin = pair.psql(
            "SELECT payload->>'origin' FROM infra.memoria_sync_events "
            f"WHERE payload->>'entity_id' = '{mid}'"
        )
        assert origin.split() == ["region-a"], origin


def test_2_privacy_filters(pair: Pair) -> None:
    private = pair.write("region-a", "a diagnosis", y=-12)
    too_public = pair.write("region-a", "above region B's ceiling", y=12)
    marker = pair.write("region-a", "shared", y=5)
    pair.wait_all("region-b", [marker], 30)
    assert not pair.has("region-b", private)  # y=-12 is not replicated with privacy_floor=0
    assert not pair.has("region-b", too_public)
    assert pair.has("region-a", private) and pair.has("region-a", too_public)


def test_3_only_the_leader_decrements(pair: Pair) -> None:
    status, body = http("POST", f"{pair.url('region-b')}/admin/decrement", {})
    assert status == 409 and "does not lead" in body["detail"], (status, body)
    status, body = http("POST", f"{pair.url('region-a')}/admin/decrement", {})
    assert status == 200, (status, body)
    eventually(
        lambda: pair.metadata("region-b").get("last_decrement_by") == "region-a",
        60,
        "region-b applying the leader's decrement",
        1,
    )
    for region in ("region-a", "region-b"):  # service_metadata, read in each region's pod
        meta = pair.metadata(region)
        assert meta["last_decrement_by"] == "region-a", (region, meta)
        assert meta["last_decrement_date"], (region, meta)
    # the same date again is refused by the store's fence: one decrement per date
    status, body = http("POST", f"{pair.url('region-a')}/admin/decrement", {})
    assert pair.metadata("region-a")["last_decrement_date"] == meta["last_decrement_date"]


def test_4_failover_drill(pair: Pair) -> None:
    written: list[str] = [pair.write("region-b", f"b before {i}", y=1) for i in range(3)]
    # a standby's writes reach the leader too (with Redis: through its replica's primary)
    pair.wait_all("region-a", written, 60)
    written += [pair.write("region-a", f"a before {i}", y=1) for i in range(3)]
    pair.wait_all("region-b", written, 60)

    pod = pair.pod("region-a")
    pid = container_pid(pair.node, pod)
    os.kill(pid, signal.SIGSTOP)  # region A stops serving...
    thawed = False
    try:
        if pair.backend == "redis":  # ...and with Redis its broker goes down with it
            pair.kube.kubectl("scale", "deploy/redis-a", "--replicas=0", "-n", pair.ns)
        took = pair.elapsed_until(
            lambda: pair.holder() == pair.key("region-b") and pair.leads("region-b"),
            BOUND + SLACK + 20,
            "region-b leading",
        )
        print(f"{pair.backend}: region-b leads {took:.1f}s after region-a was frozen")
        eventually(lambda: pair.row("region-a").get("READY") == "False", 30, "a not Ready", 0.5)
        assert pair.row("region-b")["READY"] == "True"
        after = [pair.write("region-b", f"b after {i}", y=1) for i in range(5)]
        written += after

        def drained() -> bool:
            sync = pair.health("region-b")["sync"]
            return bool(sync["state"] == "ok" and sync.get("outbox_depth", 0) == 0)

        eventually(drained, 60, "region-b's outbox drained on its own broker", 0.5)
        if pair.backend == "redis":
            role = pair.exec_broker("redis-b", "redis-cli", "role").split()
            assert role[0] == "master", role  # promoted by region-b, the new leader
            journal = pair.journal("redis-b")
            assert all(m in journal for m in after)
            # the documented step before region A rejoins: its Redis follows the new primary
            pair.kube.kubectl("scale", "deploy/redis-a", "--replicas=1", "-n", pair.ns)
            wait_for(pair.kube, pair.ns, "deployment/redis-a", "condition=Available", 120)
            b_ip = pair.kube.get_json("service", "redis-b", "-n", pair.ns)["spec"]["clusterIP"]
            pair.exec_broker("redis-a", "redis-cli", "replicaof", b_ip, "6379")
        else:
            # every region connection (TCP; this psql is on the socket) cut by the server:
            # the listeners must come back on their own
            pair.psql(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE client_addr IS NOT NULL"
            )
        os.kill(pid, signal.SIGCONT)
        thawed = True
    finally:
        if not thawed:
            os.kill(pid, signal.SIGCONT)

    # region A is back as a standby: no failback, it catches up on what B took meanwhile
    pair.settled("region-b", 180)
    pair.wait_all("region-a", written, 90)
    reconnected = "region-a" if pair.backend == "redis" else "region-b"
    eventually(
        lambda: (
            pair.health(reconnected)["sync"]["listener_reconnects"] >= 1
            and pair.health(reconnected)["sync"]["listener_connected"]
        ),
        60,
        f"{reconnected}'s listener reconnecting",
        1,
    )
    # and counted in the metrics a Prometheus scrapes
    scraped = pair.metrics(reconnected).splitlines()
    (line,) = [x for x in scraped if x.startswith("memoria_sync_listener_reconnects ")]
    assert float(line.split()[1]) >= 1, line
    late = pair.write("region-a", "a standby again", y=1)
    pair.wait_all("region-b", [late], 60)
    # every write answered 201 is in both regions
    for region in ("region-a", "region-b"):
        missing = [m for m in [*written, late] if not pair.has(region, m)]
        assert not missing, (region, missing)


def test_5_kubectl_memoria_status_reads_health_through_the_service_proxy(
    pair: Pair, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The day-2 view on pods: the plugin, found by a real kubectl, reads each region's
    /healthz through the API server's service proxy (the process test bed cannot: its
    regions listen on loopback, which the API server refuses to proxy to)."""
    bin_dir = plugin_bin(tmp_path_factory.mktemp("plugin"))
    proc = kubectl_memoria(pair.kube, bin_dir, "status", "-n", pair.ns, "-o", "json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (group,) = json.loads(proc.stdout)
    assert group["leader"] == "region-b" and group["problems"] == [], group
    for region in group["regions"]:
        assert region["health_via"] == "service-proxy", region
        assert region["health"] == "ok" and region["sync_state"] == "ok", region
        assert region["last_decrement_by"] == "region-a", region  # test 3's, in both regions
    table = kubectl_memoria(pair.kube, bin_dir, "status", "-n", pair.ns)
    assert f"Group default in {pair.ns}: leader region-b" in table.stdout, table.stdout
