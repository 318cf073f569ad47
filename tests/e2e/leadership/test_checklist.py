"""The reference guide's Validation Checklist, automated, for both backends.

Everything is real: the local control plane (or any cluster), the operator, Redis (a primary
and a ``replicaof`` for region B, as in the guide's compose overlay) or PostgreSQL (one
database with the ``infra.memoria_sync_events`` journal), and ``memoria serve`` processes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from functools import partial

import psycopg
import pytest
import redis

from testbed import MemoriaProcess, wait_until
from testbed.harness import running_operator
from testbed.kube import KubeTarget
from testbed.regions import PG_TABLE, RegionBed, region_bed

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# the guide's privacy settings: both share from 0 up; region B keeps nothing above 10
PRIVACY = {"region-a": {"floor": 0, "ceiling": 15}, "region-b": {"floor": 0, "ceiling": 10}}


@pytest.fixture(scope="module", params=["redis", "postgres"])
def bed(
    request: pytest.FixtureRequest,
    crd_installed: KubeTarget,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RegionBed]:
    """One bed per backend for the four items in order, as the guide runs its checklist on one
    deployment (the drill, which breaks things, comes last)."""
    backend = request.param
    namespace = crd_installed.create_namespace(f"checklist-{backend}")
    try:
        with region_bed(
            crd_installed,
            namespace,
            tmp_path_factory.mktemp(f"checklist-{backend}"),
            backend=backend,
            privacy=PRIVACY,
            operator=partial(running_operator, crd_installed),
        ) as bed:
            bed.wait_leader("region-a")
            yield bed
    finally:
        crd_installed.delete_namespace(namespace)


def has(proc: MemoriaProcess, memory_id: str) -> bool:
    return proc.request("GET", f"/memories/{memory_id}")[0] == 200


def test_1_sync_heartbeat(bed: RegionBed) -> None:
    a, b = bed.processes["region-a"], bed.processes["region-b"]
    if bed.brokers.backend == "postgres":
        listener = psycopg.connect(bed.brokers.urls["region-b"], autocommit=True)
        listener.execute("LISTEN memoria_sync")
    else:
        replica = redis.Redis.from_url(bed.brokers.urls["region-b"], decode_responses=True)
        assert replica.info("replication")["role"] == "slave"  # region B reads a replica
    mid = a.write("heartbeat from region A", y=3)
    wait_until(lambda: has(b, mid), what="the write to reach region B")
    if bed.brokers.backend == "postgres":
        with psycopg.connect(bed.brokers.urls["region-a"]) as conn:
            rows = conn.execute(
                f"SELECT payload->>'origin' FROM {PG_TABLE} WHERE payload->>'entity_id' = %s",
                (mid,),
            ).fetchall()
        assert rows == [("region-a",)]  # a memoria_sync_events row...
        notes = [json.loads(n.payload) for n in listener.notifies(timeout=2, stop_after=1)]
        assert any(n.get("entity_id") == mid for n in notes)  # ...and its notification
        listener.close()
    else:
        stream = replica.xrange("memoria-sync:journal")
        assert any(mid in fields["event"] for _, fields in stream)


def test_2_privacy_filters(bed: RegionBed) -> None:
    a, b = bed.processes["region-a"], bed.processes["region-b"]
    private = a.write("a diagnosis", y=-12)
    too_public = a.write("above region B's ceiling", y=12)
    marker = a.write("shared", y=5)
    wait_until(lambda: has(b, marker), what="the shareable memory")
    time.sleep(0.5)
    assert not has(b, private)  # y_coord=-12 is not replicated with privacy_floor=0
    assert not has(b, too_public)  # a region with a ceiling of 10 never stores a 12
    status, listing = b.request("GET", "/memories?limit=1000")
    assert status == 200
    assert all(0 <= m["y_coord"] <= 10 for m in listing["items"])


def test_3_scheduler_control(bed: RegionBed) -> None:
    b = bed.processes["region-b"]
    wait_until(
        lambda: bed.store_metadata("region-b").get("last_decrement_by") == "region-a",
        what="region B to apply the leader's decrement",
    )
    for name in ("region-a", "region-b"):  # service_metadata queried in every region
        meta = bed.store_metadata(name)
        assert meta["last_decrement_by"] == "region-a", (name, meta)
        assert meta["last_decrement_date"]
    assert "decrement timer armed" not in b.log_path.read_text()
    status, body = b.request("POST", "/admin/decrement")
    assert status == 409 and "does not lead" in body["detail"]


def test_4_failover_drill(bed: RegionBed) -> None:
    a, b = bed.processes["region-a"], bed.processes["region-b"]
    before = [a.write(f"before {i}", y=1) for i in range(5)]
    wait_until(lambda: all(has(b, m) for m in before), what="steady replication")
    bed.brokers.restart()  # the brokers restart...
    during = [a.write(f"during {i}", y=1) for i in range(5)]  # ...writes are still accepted
    wait_until(
        lambda: (
            b.health()["sync"]["listener_reconnects"] >= 1
            and b.health()["sync"]["listener_connected"]
        ),
        30,
        "B's listener to reconnect",
    )
    wait_until(lambda: all(has(b, m) for m in during), 30, "no event lost over the restart")

    a.kill()  # region A shuts down: region B takes over the decrement
    bed.wait_leader("region-b", timeout=15)
    assert bed.region("region-b")["status"]["leadership"]["lastTransitionReason"] == "Failover"
    if bed.brokers.backend == "redis":
        # as in a Redis failover: region B's replica becomes the primary, region A's Redis
        # follows it
        primary, replica = bed.brokers.redis["region-b"], bed.brokers.redis["region-a"]
        redis.Redis.from_url(primary.url).replicaof("NO", "ONE")
        redis.Redis.from_url(replica.url).replicaof("127.0.0.1", primary.port)
    after = [b.write(f"after {i}", y=1) for i in range(5)]
    restarted = bed.start("region-a")  # region A comes back, as a standby
    wait_until(
        lambda: all(has(restarted, m) for m in after),
        30,
        "region A to catch up on region B's writes",
    )
    assert bed.leading("region-a") is False
    assert all(has(restarted, m) for m in before + during)
