"""HTTP write path and decrement cost.

    .venv/bin/python bench/api_bench.py [--seconds 10] [--rows 1000000]

1. ``POST /memories`` on the embedded default (SQLite file, one uvicorn worker, no sync):
   requests/s and latency percentiles from ``wrk`` (Debian package) with 8 connections.
2. The daily decrement of N memories on PostgreSQL against a bare
   ``UPDATE memories SET x_coord = x_coord - 1`` on the same table, same run, alternating.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from memoria.store import MemoryStore
from testbed import MemoriaProcess, PostgresServer

LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
counter = 0
request = function()
  counter = counter + 1
  return wrk.format(nil, "/memories",
    nil, '{"text": "benchmark memory number ' .. counter .. '", "y_coord": 3, "x_coord": 0}')
end
"""


def bench_http(seconds: int) -> None:
    wrk = shutil.which("wrk")
    if wrk is None:
        print("wrk not installed (apt-get install wrk): skipping the HTTP benchmark")
        return
    tmp = Path(tempfile.mkdtemp(prefix="memoria-apibench-"))
    region = MemoriaProcess(
        "bench", {"DISABLE_SCHEDULERS": "true", "MEMORIA_LOG_LEVEL": "WARNING"}, workdir=tmp
    )
    region.start()
    script = tmp / "post.lua"
    script.write_text(LUA)
    try:
        # warm up, then measure
        subprocess.run(
            [wrk, "-t1", "-c8", "-d2s", "-s", str(script), region.url],
            capture_output=True,
            check=True,
        )
        out = subprocess.run(
            [wrk, "-t1", "-c8", f"-d{seconds}s", "--latency", "-s", str(script), region.url],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        region.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    pct = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", out, re.M))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    print(
        f"POST /memories, embedded SQLite, 1 worker, wrk 8 connections, {seconds}s: "
        f"{rps:,.0f} requests/s; latency p50 {pct.get('50')}, p90 {pct.get('90')}, "
        f"p99 {pct.get('99')}; non-2xx: {errors.group(1) if errors else 0}"
    )


def bench_decrement(rows: int, rounds: int) -> None:
    server = PostgresServer()
    server.start()
    try:
        url = server.create_database("decrement")
        store = MemoryStore(url)
        import psycopg

        with psycopg.connect(url) as conn, conn.cursor() as cur:
            with cur.copy(
                "COPY memories (id, namespace, text, x_coord, y_coord, z_coord, "
                "created_at, updated_at, version, origin) FROM STDIN"
            ) as copy:
                for i in range(rows):
                    copy.write_row(
                        (
                            f"m{i:08d}",
                            "bench",
                            "t" * 40,
                            0,
                            0,
                            0,
                            "2026-01-01T00:00:00+00:00",
                            "2026-01-01T00:00:00+00:00",
                            1,
                            "seed",
                        )
                    )
            conn.commit()
            conn.autocommit = True
            conn.execute("VACUUM ANALYZE memories")
        bare_times, ours = [], []
        for r in range(rounds):
            with psycopg.connect(url) as conn:
                start = time.perf_counter()
                conn.execute("UPDATE memories SET x_coord = x_coord - 1")
                conn.commit()
                bare_times.append(time.perf_counter() - start)
                conn.autocommit = True
                conn.execute("VACUUM memories")
            start = time.perf_counter()
            outcome = store.run_decrement(
                f"2040-01-{r + 1:02d}", token=1, region="bench", make_event=lambda _d: None
            )
            ours.append(time.perf_counter() - start)
            assert outcome.ran and outcome.rows == rows
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("VACUUM memories")
        store.close()
    finally:
        server.destroy()
    bare, mine = statistics.median(bare_times), statistics.median(ours)
    print(
        f"decrement of {rows:,} memories on PostgreSQL (median of {rounds}, alternating): "
        f"bare UPDATE {bare:.2f}s, fenced decrement {mine:.2f}s, ratio {mine / bare:.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    bench_http(args.seconds)
    bench_decrement(args.rows, args.rounds)


if __name__ == "__main__":
    main()
