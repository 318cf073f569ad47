"""Replication between two regions through each backend, on real Redis and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from testbed import PostgresServer, RedisServer, wait_until
from testbed.inprocess import Broker, Region, two_regions

pytestmark = pytest.mark.integration

BACKENDS = ["memory", "redis", "redis-replica", "postgres", "postgres-no-table"]


@pytest.fixture
def broker(
    request: pytest.FixtureRequest,
    redis_server: RedisServer,
    redis_factory: list[RedisServer],
    postgres_server: PostgresServer,
) -> Iterator[Broker]:
    kind = request.param
    if kind == "memory":
        yield Broker("memory", "", "")
    elif kind == "redis":
        yield Broker("redis", redis_server.url, redis_server.url)
    elif kind == "redis-replica":
        # the guide's region-B topology: region B reads a replicaof region A's Redis
        replica = RedisServer(replica_of=redis_server)
        redis_factory.append(replica)
        replica.start()
        yield Broker("redis", redis_server.url, replica.url)
    elif kind == "postgres":
        url = postgres_server.create_database("sync")
        yield Broker("postgres", url, url, table="infra.memoria_sync_events")
    else:
        url = postgres_server.create_database("sync")
        yield Broker("postgres", url, url, table=None)


def journal(broker: Broker) -> list[dict[str, object]]:
    """Every event the broker holds for the channel, read straight from the broker."""
    if broker.backend == "redis":
        client = redis.Redis.from_url(broker.publish_url, decode_responses=True)
        return [json.loads(f["event"]) for _, f in client.xrange(f"{broker.channel}:journal")]
    if broker.backend == "postgres" and broker.table:
        with psycopg.connect(broker.publish_url) as conn:
            rows = conn.execute(
                "SELECT payload FROM infra.memoria_sync_events WHERE channel = %s ORDER BY id",
                (broker.channel,),
            ).fetchall()
        return [r[0] for r in rows]
    from memoria.sync.memory import InProcessSyncBackend

    if broker.backend == "memory":
        return [json.loads(r) for r in InProcessSyncBackend(channel=broker.channel).channel.journal]
    return []


@pytest.mark.parametrize("broker", BACKENDS, indirect=True)
def test_write_in_a_appears_in_b(broker: Broker, tmp_path: Path) -> None:
    with two_regions(broker, tmp_path) as (a, b):
        ids = {a.write(f"memory {i}", y=i % 15) for i in range(50)}
        wait_until(lambda: ids <= b.ids(), what="replication to region-b")
        copy = b.store.get_memory(next(iter(ids)))
        assert copy.origin == "region-a"
        # B's own write comes back to A too (both directions), also from a read-only replica:
        # its events go to the replica's primary
        other = b.write("from b", y=1)
        wait_until(lambda: other in a.ids(), what="replication to region-a")


@pytest.mark.parametrize("broker", BACKENDS, indirect=True)
def test_guide_check_private_memory_not_replicated(broker: Broker, tmp_path: Path) -> None:
    with two_regions(broker, tmp_path, a_range=(0, 15), b_range=(0, 15)) as (a, b):
        private = a.write("my diagnosis", y=-12)
        public = a.write("the weather", y=3)
        wait_until(lambda: public in b.ids(), what="the public memory")
        assert private not in b.ids()
        assert all(e.get("entity_id") != private for e in journal(broker))
        # the relay counts a batch once the broker took it: region-b may have it a moment before
        wait_until(lambda: a.count("memoria_sync_events_published_total") >= 1, what="counted")
        assert a.count("memoria_sync_events_published_total") == 1


@pytest.mark.parametrize("broker", BACKENDS, indirect=True)
def test_update_out_of_range_withdraws_peer_copy(broker: Broker, tmp_path: Path) -> None:
    with two_regions(broker, tmp_path, a_range=(0, 15), b_range=(0, 10)) as (a, b):
        mid = a.write("shared for now", y=5)
        wait_until(lambda: mid in b.ids(), what="first copy")
        a.writes.update_memory(mid, {"y_coord": -3.0, "text": "now private"})
        wait_until(lambda: mid not in b.ids(), what="withdrawal")
        # the private text never left region A
        assert not any("now private" in json.dumps(e) for e in journal(broker))
        high = a.write("above b's ceiling", y=12)
        low = a.write("inside", y=9)
        wait_until(lambda: low in b.ids(), what="the in-range memory")
        assert high not in b.ids()


# -- property: zero leaks either way, over random events and ranges --------------------------

ranges = st.tuples(st.integers(-15, 15), st.integers(-15, 15)).map(lambda t: (min(t), max(t)))
ys = st.lists(st.integers(-15, 15) | st.floats(-15, 15, allow_nan=False), min_size=1, max_size=25)


@pytest.mark.parametrize("broker", ["memory", "redis", "postgres"], indirect=True)
def test_privacy_property_no_leaks(
    broker: Broker, tmp_path_factory: pytest.TempPathFactory
) -> None:
    @settings(
        max_examples=25,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(a_range=ranges, b_range=ranges, y_values=ys)
    def check(a_range: tuple[int, int], b_range: tuple[int, int], y_values: list[float]) -> None:
        broker.channel = f"p{abs(hash((a_range, b_range, tuple(y_values), id(y_values))))}"
        tmp = tmp_path_factory.mktemp("prop")
        with two_regions(broker, tmp, a_range=a_range, b_range=b_range) as (a, b):
            written = {a.write(f"y={y}", y=y): y for y in y_values}
            marker = a.write("marker", y=max(a_range[0], b_range[0]))
            expect_marker = a_range[0] <= max(a_range[0], b_range[0]) <= min(a_range[1], b_range[1])
            if expect_marker:
                wait_until(lambda: marker in b.ids(), timeout=20, what="marker")
            else:
                wait_until(lambda: a.store.outbox_depth("region-a") == 0, what="outbox drained")
                wait_until(
                    lambda: (
                        b.count("memoria_sync_events_received_total")
                        >= a.count("memoria_sync_events_published_total")
                    ),
                    what="delivery",
                )
            stored = b.ids()
            for mid, y in written.items():
                shared = a_range[0] <= y <= a_range[1] and b_range[0] <= y <= b_range[1]
                assert (mid in stored) == shared, (mid, y, a_range, b_range)
            published = journal(broker)
            for event in published:
                y = event["payload"].get("privacy")  # type: ignore[union-attr]
                assert a_range[0] <= y <= a_range[1], f"leaked out of region-a: {event}"
            for memory in b.store.list_memories(limit=10_000):
                assert b_range[0] <= memory.y_coord <= b_range[1], f"stored in b: {memory}"

    check()


def test_regions_sharing_one_store_keep_their_own_outbox(
    postgres_server: PostgresServer, redis_server: RedisServer
) -> None:
    store = postgres_server.create_database("shared_store")
    broker = Broker("redis", redis_server.url, redis_server.url)
    a = Region("region-a", store, broker.sync(reader=False)).start()
    b = Region("region-b", store, broker.sync(reader=True)).start()
    try:
        ids = {a.write(f"m{i}", y=0) for i in range(20)}
        written = {i: a.store.get_memory(i).version for i in ids}
        wait_until(lambda: b.count("memoria_sync_events_received_total") >= 20, what="delivery")
        assert ids <= b.ids()
        wait_until(lambda: a.count("memoria_sync_events_published_total") >= 20, what="counted")
        assert a.count("memoria_sync_events_published_total") == 20
        assert b.count("memoria_sync_events_published_total") == 0
        # every event was a duplicate of a row region-b already sees in the shared store
        assert {i: b.store.get_memory(i).version for i in ids} == written
    finally:
        a.stop()
        b.stop()
