"""Sync throughput and latency: one publisher process, one subscriber process, real brokers.

    .venv/bin/python bench/sync_bench.py [--events 200000] [--latency-seconds 10]

Prints, per backend (Redis, PostgreSQL with a journal table):
- delivered events/s: first publish to last delivery, 300-byte payloads, batches of 500
  (``publish_many``, what the outbox relay does);
- the guide's call: ``SyncEvent(action="memory.created", ...)`` and ``backend.publish(event)``,
  one event per call, then ``flush()``: publish() calls/s and delivered events/s; beside it, in
  the same run, the reference implementation's documented calls emulated (a plain ``PUBLISH``
  per event on Redis; ``INSERT`` then ``NOTIFY`` per event on PostgreSQL, autocommit), so the
  ratio is measured on the same loaded machine;
- publish-to-handler latency p50/p99 at a steady 1,000 events/s;
- for Redis, raw ``redis-benchmark`` PUBLISH throughput from the same run, and our ratio to it;
and end to end, memories/s replicated from one region's store into the peer region's store.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import redis
from psycopg import sql

from memoria.sync.base import SyncBackend
from memoria.sync.events import Action, EntityType, SyncEvent
from memoria.sync.postgres import PostgresSyncBackend
from memoria.sync.redis import RedisSyncBackend
from testbed import PostgresServer, RedisServer

PAYLOAD_BYTES = 300


def make_backend(kind: str, url: str, channel: str) -> SyncBackend:
    if kind == "redis":
        return RedisSyncBackend(url, channel=channel)
    return PostgresSyncBackend(url, channel=channel, table="bench.memoria_sync_events")


def guide_event(i: int, filler: str) -> SyncEvent:
    """The guide's call, keyword arguments and string action."""
    return SyncEvent(
        action="memory.created",
        entity_type="memory",
        namespace="bench",
        entity_id=str(i),
        payload={"i": i, "t": time.time(), "text": filler},
    )


def reference_style_json(i: int, filler: str) -> str:
    """An event as the reference implementation encodes one (a dict, the stdlib's json)."""
    created = dt.datetime.now(dt.UTC).isoformat()
    return json.dumps(
        {
            "action": "memory.created",
            "entity_type": "memory",
            "namespace": "bench",
            "created_at": created,
            "entity_id": str(i),
            "payload": {"i": i, "t": time.time(), "text": filler},
            "origin": "bench-reference",
        }
    )


def event(i: int, filler: str) -> SyncEvent:
    return SyncEvent(
        Action.CREATE,
        EntityType.MEMORY,
        "bench",
        str(i),
        {"i": i, "t": time.time(), "text": filler},
        "bench-publisher",
    )


def filler_for(target: int) -> str:
    probe = event(0, "").to_json()
    return "x" * max(0, target - len(probe))


# -- child roles -------------------------------------------------------------------------------


def role_subscriber(kind: str, url: str, channel: str, expect: int, mode: str) -> None:
    backend = make_backend(kind, url, channel)
    received = 0
    latencies: list[float] = []
    first = last = 0.0

    def on_batch(batch: list[Any]) -> None:
        nonlocal received, first, last
        now = time.time()
        if not received:
            first = now
        for d in batch:
            if d.event is not None and mode == "latency":
                latencies.append(now - d.event.payload["t"])
        received += len(batch)
        last = now

    sub = backend.subscribe_batches(on_batch, after=None)
    while not sub.stats.connected:
        time.sleep(0.01)
    print("READY", flush=True)
    deadline = time.time() + 600
    while received < expect and time.time() < deadline:
        time.sleep(0.005)
    backend.close()
    print(
        json.dumps({"received": received, "first": first, "last": last, "latencies": latencies}),
        flush=True,
    )


def role_reference_style(kind: str, url: str, channel: str, count: int) -> None:
    """The reference's documented publish, one event per call, as a loop would call it."""
    filler = filler_for(PAYLOAD_BYTES)
    if kind == "redis":
        client = redis.Redis.from_url(url, decode_responses=True)
        start = time.time()
        for i in range(count):
            client.publish(channel, reference_style_json(i, filler))
    else:
        conn = psycopg.connect(url, autocommit=True)
        table = sql.Identifier("bench", "reference_events")
        conn.execute("CREATE SCHEMA IF NOT EXISTS bench")
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (id BIGSERIAL PRIMARY KEY, created_at TIMESTAMPTZ "
                "NOT NULL DEFAULT NOW(), payload JSONB NOT NULL)"
            ).format(table)
        )
        insert = sql.SQL("INSERT INTO {} (payload) VALUES (%s)").format(table)
        start = time.time()
        for i in range(count):
            raw = reference_style_json(i, filler)
            conn.execute(insert, (raw,))
            conn.execute(sql.SQL("NOTIFY {}, {}").format(sql.Identifier(channel), sql.Literal(raw)))
    print(json.dumps({"start": start, "calls_done": time.time()}), flush=True)


def role_publisher(kind: str, url: str, channel: str, count: int, mode: str, rate: int) -> None:
    backend = make_backend(kind, url, channel)
    filler = filler_for(PAYLOAD_BYTES)
    backend.publish_many([])  # connect (and create the journal) before timing
    if kind == "postgres":
        backend.ping()
    start = time.time()
    if mode == "guide":
        for i in range(count):
            backend.publish(guide_event(i, filler))
        calls_done = time.time()
        backend.flush(600)
        backend.close()
        print(json.dumps({"start": start, "calls_done": calls_done}), flush=True)
        return
    if mode == "throughput":
        batch = 500
        for base in range(0, count, batch):
            backend.publish_many([event(i, filler) for i in range(base, min(count, base + batch))])
    else:
        interval = 1.0 / rate
        next_at = time.perf_counter()
        for i in range(count):
            backend.publish(event(i, filler))
            next_at += interval
            pause = next_at - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
    backend.close()
    print(json.dumps({"start": start}), flush=True)


# -- orchestration -----------------------------------------------------------------------------


def child(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, "--child", *args], stdout=subprocess.PIPE, text=True
    )


def run_pair(kind: str, url: str, count: int, mode: str, rate: int = 1000) -> dict[str, Any]:
    channel = f"bench{uuid.uuid4().hex[:8]}"
    sub = child("subscriber", kind, url, channel, str(count), mode)
    assert sub.stdout is not None
    line = sub.stdout.readline()
    assert line.strip() == "READY", line
    pub = child("publisher", kind, url, channel, str(count), mode, str(rate))
    pub_out, _ = pub.communicate(timeout=900)
    sub_out, _ = sub.communicate(timeout=900)
    published = json.loads(pub_out.strip().splitlines()[-1])
    got = json.loads(sub_out.strip().splitlines()[-1])
    assert got["received"] >= count, f"{kind}: received {got['received']} of {count}"
    return {**published, **got}


def run_reference_style(kind: str, url: str, count: int) -> float:
    """publish calls/s of the reference's documented calls, emulated (no subscriber)."""
    channel = f"ref{uuid.uuid4().hex[:8]}"
    proc = child("reference-style", kind, url, channel, str(count), "-")
    out, _ = proc.communicate(timeout=900)
    result = json.loads(out.strip().splitlines()[-1])
    return float(count / (result["calls_done"] - result["start"]))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def redis_benchmark_publish(port: int, n: int) -> float | None:
    tool = shutil.which("redis-benchmark")
    if tool is None:
        return None
    out = subprocess.run(
        [
            tool,
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-n",
            str(n),
            "-q",
            "--csv",
            "PUBLISH",
            "benchraw",
            "x" * PAYLOAD_BYTES,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    # CSV: "test","rps",...
    row = [r for r in out.splitlines() if r and not r.startswith('"test"')][-1]
    return float(row.split(",")[1].strip('"'))


def e2e_region(name: str, kind: str, url: str, channel: str, tmp: str) -> Any:
    from pydantic import SecretStr

    from memoria.runtime import Runtime
    from memoria.settings import DatabaseSettings, MemoriaSettings, SyncBackendName, SyncSettings

    table = "bench.memoria_sync_events" if kind == "postgres" else None
    sync = SyncSettings(
        enabled=True,
        backend=SyncBackendName(kind),
        connection_url=SecretStr(url),
        channel=channel,
        table=table,
    )
    store = f"sqlite:///{Path(tmp) / (name + channel)}.db"
    settings = MemoriaSettings(
        region=name,
        sync=sync,
        database=DatabaseSettings(connection_string=SecretStr(store)),
    )
    return Runtime(settings, disable_schedulers=True)


def role_e2e_reader(kind: str, url: str, channel: str, count: int, tmp: str) -> None:
    region = e2e_region("b", kind, url, channel, tmp)
    region.start()
    while not (region.sync.subscription and region.sync.subscription.stats.connected):
        time.sleep(0.01)
    print("READY", flush=True)
    deadline = time.time() + 600
    while region.store.count_memories() < count and time.time() < deadline:
        time.sleep(0.005)
    last = time.time()
    received = region.store.count_memories()  # before stop(): it closes the store
    region.stop()
    print(
        json.dumps({"received": received, "first": 0, "last": last, "latencies": []}),
        flush=True,
    )


def role_e2e_writer(kind: str, url: str, channel: str, count: int, tmp: str, prefill: bool) -> None:
    region = e2e_region("a", kind, url, channel, tmp)
    filler = "y" * 200
    if prefill:  # measure the pipeline alone: outbox -> broker -> peer store
        for i in range(count):
            region.writes.create_memory(
                namespace="bench", text=f"{i} {filler}", x_coord=0.0, y_coord=0.0, z_coord=0.0
            )
    start = time.time()
    region.start()
    if not prefill:  # measure writes and replication together, one writer thread
        for i in range(count):
            region.writes.create_memory(
                namespace="bench", text=f"{i} {filler}", x_coord=0.0, y_coord=0.0, z_coord=0.0
            )
    written = time.time()
    while region.store.outbox_depth("a") and time.time() < start + 600:
        time.sleep(0.005)
    region.stop()
    print(json.dumps({"start": start, "written": written}), flush=True)


def replicate_end_to_end(
    kind: str, url: str, count: int, tmp: Path, prefill: bool
) -> tuple[float, float]:
    """(memories/s into region B's store, region A's write rate while relaying)."""
    channel = f"e2e{uuid.uuid4().hex[:8]}"
    reader = child("e2e-reader", kind, url, channel, str(count), str(tmp))
    assert reader.stdout is not None
    assert reader.stdout.readline().strip() == "READY"
    writer = child("e2e-writer", kind, url, channel, str(count), str(tmp), str(int(prefill)))
    w_out, _ = writer.communicate(timeout=900)
    r_out, _ = reader.communicate(timeout=900)
    w = json.loads(w_out.strip().splitlines()[-1])
    r = json.loads(r_out.strip().splitlines()[-1])
    assert r["received"] >= count, r
    return count / (r["last"] - w["start"]), count / (w["written"] - w["start"])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        role, kind, url, channel, n, mode, *rest = sys.argv[2:]
        if role == "reference-style":
            role_reference_style(kind, url, channel, int(n))
        elif role == "e2e-reader":
            role_e2e_reader(kind, url, channel, int(n), mode)
        elif role == "e2e-writer":
            role_e2e_writer(kind, url, channel, int(n), mode, rest[0] == "1")
        elif role == "subscriber":
            role_subscriber(kind, url, channel, int(n), mode)
        else:
            role_publisher(kind, url, channel, int(n), mode, int(rest[0]))
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--latency-seconds", type=int, default=10)
    parser.add_argument("--e2e-memories", type=int, default=50_000)
    parser.add_argument("--guide-events", type=int, default=100_000)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="memoria-bench-"))
    redis_server, pg_server = RedisServer(), PostgresServer()
    redis_server.start()
    pg_server.start()
    pg_url = pg_server.create_database("bench")
    print(
        f"machine: {os.cpu_count()} cores; payload {PAYLOAD_BYTES} bytes; "
        f"{args.events} events per throughput run"
    )
    try:
        for kind, url in (("redis", redis_server.url), ("postgres", pg_url)):
            thr = run_pair(kind, url, args.events, "throughput")
            rate = args.events / (thr["last"] - thr["start"])
            # the raw figure right after ours: a loaded machine's speed drifts within minutes
            raw = redis_benchmark_publish(redis_server.port, args.events) if kind == "redis" else 0
            lat = run_pair(kind, url, args.latency_seconds * 1000, "latency", 1000)
            ms = [x * 1000 for x in lat["latencies"]]
            print(
                f"{kind:9s} delivered {rate:10,.0f} events/s | at 1,000/s: "
                f"p50 {statistics.median(ms):.2f} ms, p99 {percentile(ms, 0.99):.2f} ms, "
                f"max {max(ms):.2f} ms"
            )
            if raw:
                print(
                    f"          redis-benchmark PUBLISH right after (50 clients, no pipeline): "
                    f"{raw:,.0f} req/s; ours delivered/raw publish = {rate / raw:.2f}x"
                )
        print(
            f"the guide's call, one event per publish(), {args.guide_events} events, then flush():"
        )
        for kind, url in (("redis", redis_server.url), ("postgres", pg_url)):
            guide = run_pair(kind, url, args.guide_events, "guide")
            calls = args.guide_events / (guide["calls_done"] - guide["start"])
            delivered = args.guide_events / (guide["last"] - guide["start"])
            reference = run_reference_style(kind, url, min(args.guide_events, 20_000))
            print(
                f"  {kind:9s} ours: {calls:10,.0f} publish() calls/s, {delivered:10,.0f} "
                f"events/s delivered | the reference's calls emulated: {reference:8,.0f}/s "
                f"| ours delivered / reference = {delivered / reference:.1f}x"
            )
        for kind, url in (("redis", redis_server.url), ("postgres", pg_url)):
            pipeline, _ = replicate_end_to_end(kind, url, args.e2e_memories, tmp, True)
            live, writes = replicate_end_to_end(kind, url, args.e2e_memories, tmp, False)
            print(
                f"end to end via {kind:9s}: {pipeline:10,.0f} memories/s replicated from "
                f"region A's outbox into region B's store"
            )
            print(
                f"    writing and replicating at once: {live:10,.0f} memories/s into B "
                f"(one writer thread in A committing each memory: {writes:,.0f} writes/s)"
            )
    finally:
        redis_server.destroy()
        pg_server.destroy()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
