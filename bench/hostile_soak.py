"""A hostile peer floods the brokers while honest writes go on; nothing honest may be lost.

    .venv/bin/python bench/hostile_soak.py [--minutes 10] [--backends redis,postgres]

Per backend (real Redis, real PostgreSQL with a journal table; both at once), two ``memoria
serve`` processes: region-a takes honest writes through its API (about 20 a second), region-b
receives them. Meanwhile a hostile peer holding the broker's credentials publishes, every
round: decrements dated ahead or with huge fencing tokens, deletes and updates of the honest
memories with versions no clock produced, deletes from another region that do not win, events
over the size cap (2 MiB) and texts over the API's cap, malformed JSON, and (PostgreSQL) chunk
notifications that never complete. Prints, per backend: honest memories written and lost at
region-b (goal: 0), the highest RSS of each region (goal: under 300 MiB), the refusals counted
by region-b, and whether a forged decrement ran (goal: no).
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import re
import sys
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psycopg
import redis

from memoria.settings import SyncSettings
from memoria.store import MemoryStore
from memoria.sync import SyncBackend, create_backend
from testbed import MemoriaProcess, PostgresServer, RedisServer, wait_until
from testbed.hostile import forge, forged_decrement, forged_memory_event

MIB = 1 << 20


@dataclass
class Run:
    backend: str
    url: str
    channel: str
    table: str | None
    writer: MemoriaProcess | None = None
    reader: MemoriaProcess | None = None
    honest: list[str] = field(default_factory=list)
    sent: dict[str, int] = field(default_factory=dict)
    rss: dict[str, int] = field(default_factory=lambda: {"region-a": 0, "region-b": 0})
    errors: list[str] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        env = {
            "MEMORIA_SYNC__ENABLED": "true",
            "MEMORIA_SYNC__BACKEND": self.backend,
            "MEMORIA_SYNC__CONNECTION_URL": self.url,
            "MEMORIA_SYNC__CHANNEL": self.channel,
            "DISABLE_SCHEDULERS": "true",  # a decrement at region-b could only be a forged one
        }
        if self.table:
            env["MEMORIA_SYNC__TABLE"] = self.table
        return env

    def sync(self) -> SyncSettings:
        return SyncSettings(
            enabled=True,
            backend=self.backend,  # type: ignore[arg-type]
            connection_url=self.url,  # type: ignore[arg-type]
            channel=self.channel,
            table=self.table,
        )


def rss_of(pid: int | None) -> int:
    if pid is None:
        return 0
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    found = re.search(r"VmRSS:\s+(\d+) kB", status)
    return int(found.group(1)) * 1024 if found else 0


def hostile_round(run: Run, backend: SyncBackend, rng: random.Random, big: str) -> None:
    """One round of forgeries, published with the broker's credentials."""
    today = dt.datetime.now(dt.UTC).date()
    targets = rng.sample(run.honest, min(20, len(run.honest))) if run.honest else ["none"]
    events: list[tuple[str, dict[str, Any]]] = [
        ("decrement_ahead", forged_decrement((today + dt.timedelta(days=2)).isoformat(), 1)),
        (
            "decrement_token",
            forged_decrement((today - dt.timedelta(days=1)).isoformat(), 2**63 - 1),
        ),
        ("text_over_cap", forged_memory_event("memory.created", uuid.uuid4().hex, "x")),
        (
            "future",
            forged_memory_event("memory.updated", targets[0], "x", created_at="2199-01-01T00:00Z"),
        ),
    ]
    events[2][1]["payload"]["snapshot"]["text"] = "t" * 150_000
    for target in targets:
        events.append(
            ("delete_version", forged_memory_event("memory.deleted", target, "a", version=2**62))
        )
        events.append(
            ("delete_foreign", forged_memory_event("memory.deleted", target, "zz", version=1))
        )
        update = forged_memory_event("memory.updated", target, "a", version=2**62)
        events.append(("update_version", update))
    if rng.random() < 0.5:  # about 1 MiB a second of oversized events per backend
        events.append(("oversized", forged_memory_event("memory.created", "big", "x", pad=big)))
    forge(backend, *(event for _, event in events))
    for kind, _ in events:
        run.sent[kind] = run.sent.get(kind, 0) + 1


def garbage_round(run: Run, raw: Any, rng: random.Random) -> None:
    """Malformed messages on the channel itself (and, on PostgreSQL, chunks that never end)."""
    junk = ['{"action": "memory.created"', "null", "[1,2,3]", '{"action": 7}', '{"a": "\\ud800"}']
    if run.backend == "redis":
        junk.append("\u0000" * 10)  # PostgreSQL cannot carry a NUL in a NOTIFY at all
        for text in junk:
            raw.publish(run.channel, text)
    else:
        for text in junk:
            raw.execute("SELECT pg_notify(%s, %s)", (run.channel, text))
        for n in range(200):
            chunk = {
                "action": "memoria.chunk",
                "entity_type": "chunk",
                "namespace": "_memoria_chunk",
                "chunk": {"event_id": uuid.uuid4().hex, "index": n % 7, "count": 300},
                "data": "c" * 3000,
            }
            raw.execute("SELECT pg_notify(%s, %s)", (run.channel, orjson.dumps(chunk).decode()))
        run.sent["never_ending_chunks"] = run.sent.get("never_ending_chunks", 0) + 200
    run.sent["malformed"] = run.sent.get("malformed", 0) + len(junk)


def honest_writer(run: Run, stop: threading.Event) -> None:
    assert run.writer is not None
    n = 0
    while not stop.is_set():
        try:
            run.honest.append(run.writer.write(f"honest {run.backend} {n}", y=0))
            n += 1
        except Exception as exc:
            run.errors.append(f"write: {exc}"[:200])
        stop.wait(0.05)


def hostile_peer(run: Run, stop: threading.Event) -> None:
    rng = random.Random(7)
    big = "z" * (2 * MIB)
    backend = create_backend(run.sync())
    raw: Any = (
        redis.Redis.from_url(run.url)
        if run.backend == "redis"
        else psycopg.connect(run.url, autocommit=True)
    )
    try:
        while not stop.is_set():
            try:
                hostile_round(run, backend, rng, big)
                garbage_round(run, raw, rng)
            except Exception as exc:
                run.errors.append(f"hostile: {exc}"[:200])
            stop.wait(0.5)
    finally:
        backend.close()
        raw.close()


def watch_rss(runs: list[Run], stop: threading.Event) -> None:
    while not stop.wait(0.5):
        for run in runs:
            for name, proc in (("region-a", run.writer), ("region-b", run.reader)):
                pid = proc.proc.pid if proc and proc.proc else None
                run.rss[name] = max(run.rss[name], rss_of(pid))


def refusals(reader: MemoriaProcess) -> dict[str, float]:
    with urllib.request.urlopen(reader.url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    found = re.findall(r'memoria_sync_events_(?:dropped|lost)_total\{reason="(\w+)"\} (\S+)', text)
    return {reason: float(value) for reason, value in found if float(value)}


def report(run: Run) -> int:
    assert run.reader is not None
    store = MemoryStore(run.reader.env["MEMORIA_DATABASE__CONNECTION_STRING"])
    try:
        have = {m.id for m in store.list_memories(limit=10_000_000)}
        decremented = store.metadata().get("last_decrement_date") or "never"
    finally:
        store.close()
    lost = [i for i in run.honest if i not in have]
    print(f"\n== {run.backend}")
    print(f"honest memories written at region-a: {len(run.honest)}")
    print(f"lost at region-b: {len(lost)}")
    print(
        f"RSS max: region-a {run.rss['region-a'] / MIB:.0f} MiB, "
        f"region-b {run.rss['region-b'] / MIB:.0f} MiB (goal < 300)"
    )
    print(f"forged decrement ran at region-b: {decremented != 'never'} ({decremented})")
    print(f"hostile events sent: {dict(sorted(run.sent.items()))}")
    print(f"region-b refused / lost, by reason: {refusals(run.reader)}")
    if run.errors:
        print(f"errors ({len(run.errors)}), first: {run.errors[:3]}")
    return len(lost)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--backends", default="redis,postgres")
    args = parser.parse_args()
    kinds = args.backends.split(",")
    servers: list[Any] = []
    runs: list[Run] = []
    if "redis" in kinds:
        server = RedisServer()
        server.start()
        servers.append(server)
        runs.append(Run("redis", server.url, "soak-sync", None))
    if "postgres" in kinds:
        pg = PostgresServer()
        pg.start()
        servers.append(pg)
        runs.append(Run("postgres", pg.create_database("soak"), "soak_sync", "memoria_sync_events"))
    stop = threading.Event()
    threads: list[threading.Thread] = []
    try:
        for run in runs:
            run.writer = MemoriaProcess(f"a-{run.backend}", {**run.env(), "MEMORIA_REGION": "a"})
            run.reader = MemoriaProcess(f"b-{run.backend}", {**run.env(), "MEMORIA_REGION": "b"})
            run.writer.start()
            run.reader.start()
            threads += [
                threading.Thread(target=honest_writer, args=(run, stop), daemon=True),
                threading.Thread(target=hostile_peer, args=(run, stop), daemon=True),
            ]
        threads.append(threading.Thread(target=watch_rss, args=(runs, stop), daemon=True))
        for thread in threads:
            thread.start()
        print(f"soaking {args.minutes} min on {', '.join(kinds)} ...", flush=True)
        deadline = time.monotonic() + args.minutes * 60
        while time.monotonic() < deadline:
            time.sleep(min(30.0, max(0.0, deadline - time.monotonic())))
            done = ", ".join(f"{r.backend} {len(r.honest)} honest" for r in runs)
            print(f"  {time.strftime('%H:%M:%S')}: {done}", flush=True)
        stop.set()
        for thread in threads:
            thread.join(30)
        for run in runs:  # let region-b drain what is in flight
            assert run.reader is not None
            store_url = run.reader.env["MEMORIA_DATABASE__CONNECTION_STRING"]
            store = MemoryStore(store_url)
            try:
                wanted = set(run.honest)
                wait_until(
                    lambda s=store, w=wanted: w <= {m.id for m in s.list_memories(limit=10**7)},
                    120,
                    f"{run.backend}: the honest memories at region-b",
                )
            except Exception:
                pass
            finally:
                store.close()
        return max(report(run) for run in runs) and 1
    finally:
        stop.set()
        for run in runs:
            for proc in (run.writer, run.reader):
                if proc is not None:
                    proc.stop()
        for server in servers:
            server.destroy()


if __name__ == "__main__":
    sys.exit(main())
