"""The daily decrement runs once per date: fenced, even between two processes that both lead."""

from __future__ import annotations

import datetime as dt
import random
import re
import threading
import time
from pathlib import Path

import psycopg
import pytest

from memoria.store import MemoryStore
from memoria.sync.events import Action, EntityType, SyncEvent
from testbed import MemoriaProcess, PostgresServer, RedisServer, wait_until
from testbed.inprocess import Broker, seed_memories, two_regions

pytestmark = pytest.mark.integration

# recent dates: a peer refuses decrement events dated more than a day ahead
_TODAY = dt.datetime.now(dt.UTC).date()
D1, D2, D3 = ((_TODAY - dt.timedelta(days=n)).isoformat() for n in (3, 2, 1))


def _x_values(store: MemoryStore) -> set[float]:
    return {m.x_coord for m in store.list_memories(limit=10_000)}


@pytest.mark.parametrize("kind", ["postgres", "sqlite"])
def test_two_leaders_on_one_store_decrement_each_date_once(
    kind: str, postgres_server: PostgresServer, tmp_path: Path
) -> None:
    url = (
        postgres_server.create_database(f"fence_{random.randrange(1 << 30)}")
        if kind == "postgres"
        else f"sqlite:///{tmp_path / 'shared.db'}"
    )
    one, two = MemoryStore(url), MemoryStore(url)
    seed_memories(one, 50)
    dates = [(dt.date(2030, 1, 1) + dt.timedelta(days=i)).isoformat() for i in range(150)]
    ran: list[tuple[str, str]] = []
    lock = threading.Lock()
    rng = random.Random(7)
    for date in dates:
        barrier = threading.Barrier(2)
        jitter = (rng.random() / 500, rng.random() / 500)

        def attempt(
            store: MemoryStore,
            who: str,
            delay: float,
            date: str = date,
            barrier: threading.Barrier = barrier,
        ) -> None:
            barrier.wait()
            time.sleep(delay)
            outcome = store.run_decrement(date, token=1, region=who, make_event=lambda _d: None)
            if outcome.ran:
                with lock:
                    ran.append((date, who))

        threads = [
            threading.Thread(target=attempt, args=(one, "a", jitter[0])),
            threading.Thread(target=attempt, args=(two, "b", jitter[1])),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sorted(d for d, _ in ran) == dates  # each date exactly once
    assert {who for _, who in ran} == {"a", "b"}  # and both really competed
    assert _x_values(one) == {-150.0}
    meta = one.metadata()
    assert meta["last_decrement_date"] == dates[-1]
    assert meta["last_decrement_by"] in {"a", "b"}
    one.close()
    two.close()


def test_stale_fencing_token_is_refused(tmp_path: Path) -> None:
    store = MemoryStore(f"sqlite:///{tmp_path / 'fence.db'}")
    seed_memories(store, 3)
    assert store.run_decrement("2030-01-01", token=5, region="new", make_event=lambda _d: None).ran
    stale = store.run_decrement("2030-01-02", token=4, region="old", make_event=lambda _d: None)
    assert (stale.ran, stale.reason) == (False, "stale")
    store.raise_fencing_token(9)
    assert (
        store.run_decrement("2030-01-02", token=8, region="x", make_event=lambda _d: None).reason
        == "stale"
    )
    assert _x_values(store) == {-1.0}
    store.close()


def test_standby_applies_leaders_decrement_once_even_twice_or_late(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    broker = Broker("redis", redis_server.url, redis_server.url)
    with two_regions(broker, tmp_path) as (leader, standby):
        mids = [leader.write(f"m{i}", y=0) for i in range(5)]
        wait_until(lambda: set(mids) <= standby.ids(), what="memories at the standby")
        assert leader.writes.run_decrement(D1, token=1).ran
        wait_until(
            lambda: standby.store.metadata()["last_decrement_date"] == D1,
            what="the decrement at the standby",
        )
        assert _x_values(standby.store) == {-1.0}
        assert standby.store.metadata()["last_decrement_by"] == "region-a"
        # delivered twice: the very same event again, and a retry with a new id
        again = SyncEvent(
            Action.DECREMENT,
            EntityType.SCHEDULE,
            "_schedule",
            D1,
            {"date": D1, "token": 1, "region": "region-a"},
            "region-a",
        )
        from memoria.sync import create_backend

        backend = create_backend(broker.sync(reader=False))
        journal = standby.store
        backend.publish_many([again, again])
        # late: the standby is away while the leader decrements two more dates
        standby.stop()
        assert leader.writes.run_decrement(D2, token=1).ran
        assert leader.writes.run_decrement(D3, token=1).ran
        backend.publish_many([again])  # and an old date arrives after newer ones
        standby.restart()
        wait_until(
            lambda: standby.store.metadata()["last_decrement_date"] == D3,
            what="the late decrements",
        )
        time.sleep(0.5)
        backend.close()
        assert _x_values(standby.store) == {-3.0}
        assert journal is not standby.store
        assert _x_values(leader.store) == {-3.0}


@pytest.mark.slow
def test_two_serve_processes_both_leading_cross_midnight_once(
    postgres_server: PostgresServer,
) -> None:
    store_url = postgres_server.create_database(f"midnight_{random.randrange(1 << 30)}")
    seed = MemoryStore(store_url)
    seed_memories(seed, 20)
    seed.close()
    rng = random.Random()
    iterations = 4
    base = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    logs: list[str] = []
    new_days: set[str] = set()  # due at each round's midnight: decremented, once
    eves: set[str] = set()  # due at start: decremented once if a process started before midnight
    eves_certain: set[str] = set()  # ... which one surely did (seen ready before its midnight)
    for i in range(iterations):
        # each round lands just before a fresh midnight, two days after the previous one
        midnight = base + dt.timedelta(days=10 + 2 * i)
        procs = []
        wall_midnights = []
        for name in ("east", "west"):
            # seconds until this process's midnight: enough for it to start and arm its timer
            # before then even on a loaded machine (the eve's catch-up must run at start)
            lead = 8.0 + rng.random() * 2.0  # five sessions share 2 cores in CI
            offset = (midnight - dt.datetime.now(dt.UTC)).total_seconds() - lead
            wall_midnights.append(time.monotonic() + lead)
            procs.append(
                MemoriaProcess(
                    name,
                    {
                        "MEMORIA_DATABASE__CONNECTION_STRING": store_url,
                        "MEMORIA_SCHEDULER__CLOCK_OFFSET_SECONDS": f"{offset:.3f}",
                        "MEMORIA_SCHEDULER__MAX_CATCH_UP_DAYS": "1",
                        "DECREMENT_TZ": "UTC",
                    },
                )
            )
        for p in procs:
            p.start(wait=False)
        ready_before_midnight = []
        for p, wall_midnight in zip(procs, wall_midnights, strict=True):
            p.wait_ready()
            ready_before_midnight.append(time.monotonic() < wall_midnight - 0.2)
        # the eve is caught up at start by a process that came up before its midnight; one that
        # a loaded machine started late catches up only the new day (max 1 catch-up day). Seen
        # ready before midnight, it surely came up before; seen ready after, it may still have
        # (readiness is polled, and the catch-up runs before the first answer)
        new_day = midnight.date()
        new_days.add(str(new_day))
        eves.add(str(new_day - dt.timedelta(days=1)))
        if any(ready_before_midnight):
            eves_certain.add(str(new_day - dt.timedelta(days=1)))
        # past both midnights (already, when a loaded machine started them that slowly)
        time.sleep(max(0.0, max(wall_midnights) - time.monotonic() + 1.5))
        for p in procs:
            p.stop()
            logs.append(p.log_path.read_text())
    # both processes believed they led, every round: both armed their timers
    assert all("decrement timer armed" in log for log in logs)
    ran = [m for log in logs for m in re.findall(r"decrement for (\S+): \d+ memories", log)]
    # per round: the new day (midnight) and, if caught up at start, the eve; each exactly once
    assert len(ran) == len(set(ran)), ran
    assert new_days | eves_certain <= set(ran) <= new_days | eves, ran
    assert len(set(ran) & eves) >= 1  # at least one eve, or the test proved little
    with psycopg.connect(store_url) as conn:
        xs = {r[0] for r in conn.execute("SELECT x_coord FROM memories").fetchall()}
    assert xs == {-1.0 * len(ran)}


def _remote_update(store: MemoryStore, payload: dict[str, object], origin: str) -> None:
    from memoria.store import InboundOp
    from memoria.sync.applier import memory_from_payload

    event = SyncEvent(Action.UPDATE, EntityType.MEMORY, "d", str(payload["id"]), payload, origin)
    store.apply_inbound(
        [InboundOp(event.event_id, "upsert", event, memory_from_payload(payload, event))],
        source="test",
        position=None,
    )


def _remote_decrement(store: MemoryStore, date: str) -> None:
    from memoria.store import InboundOp

    event = SyncEvent(
        Action.DECREMENT,
        EntityType.SCHEDULE,
        "_schedule",
        date,
        {"date": date, "token": 1, "region": "leader"},
        "leader",
    )
    store.apply_inbound(
        [InboundOp(event.event_id, "decrement", event)], source="test", position=None
    )


def test_a_peer_update_neither_undoes_nor_repeats_a_decrement(tmp_path: Path) -> None:
    """x_coord travels with the last decrement date it reflects, so a memory updated in a
    region that is behind (or ahead) on decrements lands right in every store."""
    leader = MemoryStore(f"sqlite:///{tmp_path / 'leader.db'}")
    behind = MemoryStore(f"sqlite:///{tmp_path / 'behind.db'}")
    m = leader.create_memory(
        namespace="d",
        text="m",
        x_coord=0.0,
        y_coord=0.0,
        z_coord=0.0,
        origin="leader",
        make_event=lambda _m: None,
    )
    _remote_update(behind, m.to_payload(), "leader")
    assert leader.run_decrement(D1, token=1, region="leader", make_event=lambda _d: None).ran
    # the region that has not applied 2030-01-01 yet updates the text: its x is still 0
    updated = behind.update_memory(
        m.id, {"text": "edited"}, origin="behind", make_event=lambda _b, _a: None
    )
    assert updated.x_coord == 0.0
    _remote_update(leader, updated.to_payload(), "behind")
    assert leader.get_memory(m.id).x_coord == -1.0  # not undone
    assert leader.get_memory(m.id).text == "edited"
    # the other way round: the leader's newer copy reaches the region that is behind first
    newer = leader.update_memory(
        m.id, {"text": "again"}, origin="leader", make_event=lambda _b, _a: None
    )
    _remote_update(behind, newer.to_payload(), "leader")
    assert behind.get_memory(m.id).x_coord == -1.0
    _remote_decrement(behind, D1)  # ...then the decrement event itself
    assert behind.get_memory(m.id).x_coord == -1.0  # not repeated
    _remote_decrement(behind, D2)
    assert behind.get_memory(m.id).x_coord == -2.0
    leader.close()
    behind.close()
