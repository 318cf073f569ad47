"""A mixed fleet on a real Redis: reference regions (modelled from the documented rules, see
``reference_peer``) and ours on one channel, both ways, with a broker restart in the middle."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from memoria.ports import Leadership, LeadershipSource
from testbed import RedisServer, wait_until
from testbed.inprocess import Broker, Region, sqlite_url, two_regions
from testbed.reference_peer import (
    RedisReferencePeer,
    ReferenceReceiver,
    capture,
)

pytestmark = pytest.mark.integration

REF_ID = "3f6c1a52-8d0e-4f7b-9a61-2b5d7c0e9a14"  # the memory of the reference's captures
PRIVATE_ID = "00000000-0000-0000-0000-000000000007"
CAPTURES = ["memory.created", "memory.created.private-y-12", "memory.updated", "memory.deleted"]


@pytest.fixture
def peer(redis_server: RedisServer) -> Iterator[tuple[Broker, RedisReferencePeer]]:
    broker = Broker("redis", redis_server.url, redis_server.url)
    peer = RedisReferencePeer(redis_server.url, broker.channel, ReferenceReceiver(floor=0))
    yield broker, peer
    peer.close()


def _memory_text(region: Region, memory_id: str) -> str | None:
    return next((m.text for m in region.store.list_memories() if m.id == memory_id), None)


def test_reference_events_reach_our_region_once(
    peer: tuple[Broker, RedisReferencePeer], tmp_path: Path
) -> None:
    broker, reference = peer
    b = Region("region-b", sqlite_url(tmp_path, "b"), broker.sync(reader=True, floor=0)).start()
    try:
        wait_until(lambda: b.sync.health().listener_connected is True, what="listener")
        reference.publish(capture("memory.created"))
        wait_until(lambda: _memory_text(b, REF_ID) == "met Ana at the harbour", what="created")
        reference.publish(capture("memory.created.private-y-12"))  # y=-12, floor 0: kept out
        reference.publish(capture("memory.updated"))
        wait_until(lambda: _memory_text(b, REF_ID) == "met Ana and Luis at the harbour", what="upd")
        reference.publish(capture("memory.deleted"))
        wait_until(lambda: REF_ID not in b.ids(), what="deleted")
        # every message again, as a reference publisher retrying would: nothing changes, and
        # the create heard after the delete does not bring the memory back
        for name in CAPTURES:
            reference.publish(capture(name))
        wait_until(lambda: b.count("memoria_sync_events_dropped_total", reason="duplicate") == 4)
        assert b.ids() == set()
        assert PRIVATE_ID not in b.ids()
        assert b.count("memoria_sync_events_dropped_total", reason="privacy_in") >= 1
        assert b.count("memoria_sync_events_applied_total") == 4  # each event once
        # the reference's messages have no Stream entry: no position came from them
        assert b.store.get_cursor(f"region-b|{b.sync.backend.source_id}") in (None, "0-0")  # type: ignore[union-attr]
    finally:
        b.stop()


def test_our_writes_reach_a_reference_receiver(
    peer: tuple[Broker, RedisReferencePeer], tmp_path: Path
) -> None:
    broker, reference = peer
    reference.listen()
    receiver = reference.receiver
    assert receiver is not None
    a = Region("region-a", sqlite_url(tmp_path, "a"), broker.sync(reader=False, floor=0)).start()
    try:
        writes = a.writes
        mid = writes.create_memory(text="met Ana", y_coord=4.0).id
        private = writes.create_memory(text="my diagnosis", y_coord=-12.0).id
        wait_until(lambda: receiver.text(mid) == "met Ana", what="the create at the reference")
        writes.update_memory(mid, {"text": "met Ana and Luis"})
        wait_until(lambda: receiver.text(mid) == "met Ana and Luis", what="the update")
        writes.delete_memory(mid)
        wait_until(lambda: mid not in receiver.rows, what="the delete")
        assert private not in receiver.rows and private not in receiver.cache
        assert receiver.applied == [
            ("memory.created", mid),
            ("memory.updated", mid),
            ("memory.deleted", mid),
        ]
    finally:
        a.stop()


def test_mixed_fleet_both_ways_across_a_broker_restart(tmp_path: Path) -> None:
    server = RedisServer()  # our own: it is restarted
    server.start()
    broker = Broker("redis", server.url, server.url)
    receiver = ReferenceReceiver(floor=0)
    reference = RedisReferencePeer(server.url, broker.channel, receiver)
    reference.listen()
    try:
        with two_regions(broker, tmp_path, a_range=(0, 15), b_range=(0, 15)) as (a, b):
            wait_until(lambda: b.sync.health().listener_connected is True, what="listener")
            before = a.write("before the restart", y=2)
            reference.publish(capture("memory.created"))
            for region in (a, b):
                wait_until(lambda r=region: {before, REF_ID} <= r.ids(), what=f"{region.name}")
            wait_until(lambda: receiver.text(before) == "before the restart", what="ref receiver")

            server.stop()
            during = a.write("while Redis is down", y=3)  # kept in region A's outbox
            reference.close()  # the reference's listener does not survive a restart
            server.start()

            wait_until(lambda: during in b.ids(), timeout=30, what="the queued write at B")
            receiver_after = ReferenceReceiver(floor=0)  # a restarted reference process
            reference = RedisReferencePeer(server.url, broker.channel, receiver_after)
            reference.listen()
            wait_until(
                lambda: redis.Redis.from_url(server.url).pubsub_numsub(broker.channel)[0][1] >= 3,
                what="A, B and the reference to listen again",
            )
            after = a.write("after the restart", y=4)
            reference.publish(capture("memory.updated"))
            wait_until(lambda: receiver_after.text(after) == "after the restart", what="ref")
            for region in (a, b):
                wait_until(
                    lambda r=region: _memory_text(r, REF_ID) == "met Ana and Luis at the harbour",
                    what=f"the reference's update at {region.name}",
                )
            wait_until(lambda: after in b.ids(), what="after at B")
            assert {before, during, after, REF_ID} <= b.ids()
            # nothing twice: B applied A's three writes and the reference's two events once
            assert b.total("memoria_sync_events_applied_total") == 5
            assert len(set(receiver.applied)) == len(receiver.applied)
            assert len(set(receiver_after.applied)) == len(receiver_after.applied)
    finally:
        reference.close()
        server.destroy()


def test_a_forged_stream_id_on_the_channel_moves_nothing(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    broker = Broker("redis", redis_server.url, redis_server.url)
    with two_regions(broker, tmp_path) as (a, b):
        wait_until(lambda: b.sync.health().listener_connected is True, what="listener")
        forged = json.loads(capture("memory.created"))
        client = redis.Redis.from_url(redis_server.url)
        client.publish(broker.channel, '{"stream_id":"99999999999999-0",' + json.dumps(forged)[1:])
        mid = a.write("after the forgery", y=1)
        wait_until(lambda: mid in b.ids(), what="the write after the forgery")
        assert REF_ID not in b.ids()  # a stream_id marks ours: read from the Stream, not applied
        assert b.sync.subscription is not None
        assert b.sync.subscription.position is not None
        assert not b.sync.subscription.position.startswith("99999999999999")


def test_a_replica_cut_off_from_its_primary_keeps_events_queued_until_promoted(
    redis_factory: list[RedisServer], tmp_path: Path
) -> None:
    """The guide's region-B topology through a failover: while the replica is linked, its
    region's events go to the primary; once the primary is gone they wait in the outbox (a
    region that does not lead may not promote), and the leading region promotes the replica."""
    primary = RedisServer()
    redis_factory.append(primary)
    primary.start()
    replica = RedisServer(replica_of=primary)
    redis_factory.append(replica)
    replica.start()
    broker = Broker("redis", replica.url, replica.url)  # both regions on the replica
    with two_regions(broker, tmp_path) as (a, b):
        linked = a.write("through the replica's primary", y=0)
        wait_until(lambda: linked in b.ids(), what="a write relayed to the primary")
        assert redis.Redis.from_url(primary.url).xlen(f"{broker.channel}:journal") >= 1
        primary.stop()
        mid = a.write("waits for a writable Redis", y=0)
        wait_until(lambda: a.sync.relay.refused, what="the refusal")
        health = a.runtime.health()
        assert health["status"] == "degraded"
        assert "cut off from its primary" in health["sync"]["detail"], health
        assert primary.url.rsplit("@", 1)[-1].split("/")[0] in health["sync"]["detail"]
        assert a.store.outbox_depth("region-a") == 1
        assert a.count("memoria_sync_publish_refused_total", reason="read_only") >= 1
        assert redis.Redis.from_url(replica.url).role()[0] == b"slave"
        # what the Lease watch hands the runtime once the operator makes region-a the leader
        a.runtime._leadership_changed(
            Leadership(leading=True, token=2, holder="region-a", source=LeadershipSource.LEASE)
        )
        wait_until(lambda: mid in b.ids(), what="the queued write, once promoted")
        assert redis.Redis.from_url(replica.url).role()[0] == b"master"
        assert a.store.outbox_depth("region-a") == 0
        wait_until(lambda: a.runtime.health()["sync"]["state"] == "ok", what="healthy again")
