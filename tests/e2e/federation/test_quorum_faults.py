"""Leadership across three clusters under random faults, checked afterwards (issue 18).

A seeded schedule of faults runs against the federation bed (three control planes, an operator
per cluster, regions as processes, every operator-to-peer link through its own proxy): a whole
cluster killed and brought back, a cluster cut off both ways, one link cut one way, an API
server paused, an operator killed and restarted, an operator's clock skewed within the bound.
After each fault the regions' clocks move one day, so whoever leads runs one more date.

Everything the regions said about leading (their /healthz, polled every 50 ms) and everything
their stores say about decrements is judged at the end by :func:`testbed.history.check`:

* no two regions believed they led at once (beyond the sampling granularity: the design
  allows no overlap while the clocks stay within the skew bound, and the skews injected do);
* no store decremented a date twice (its log, and the probe memory's ``x_coord``);
* whenever a majority of clusters was up and connected, someone led within the bound;
* once the faults are over, every store holds every date (nothing lost).

The seed is printed first. Replay a failing run with ``MEMORIA_FAULT_SEED=<seed>``; the
number of rounds is ``MEMORIA_FAULT_ROUNDS`` (default 20).
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter
from functools import partial
from pathlib import Path

import pytest

from testbed import wait_until
from testbed.federation import FederationBed

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]

ROUNDS = int(os.environ.get("MEMORIA_FAULT_ROUNDS") or 20)
SKEW = 1.0  # the clock-skew bound the operators run with (MEMORIA_OPERATOR_MAX_CLOCK_SKEW_SECONDS)
DURATION = 3.0  # the Lease duration of the bed (testbed.harness.FAST_TIMINGS)
# liveness: after the leader is lost, its votes stand unchanged for the Lease duration, the
# next cluster in line waits its place x the retry interval, then a round of writes (each call
# bounded by 1 s) and the region's watch. The bound allows twice the duration plus 3 s: this
# runs on 2 cores beside the rest of the suite (bench/crosscluster_bench.py measures failover
# itself: p99 under 5 s with a 4 s Lease)
LIVENESS_BOUND = 2 * DURATION + 3.0
KINDS = ("kill-cluster", "isolate", "cut-one-way", "pause-apiserver", "kill-operator", "skew")


def leader(bed: FederationBed) -> str | None:
    found = [n for n in bed.names if bed.leading(n)]
    return found[0] if len(found) == 1 else None


def ran(bed: FederationBed, name: str, date: str) -> bool:
    """``name`` decremented ``date``, or no longer leads (its successor catches it up)."""
    return date in bed.decrements(name).dates or leader(bed) != name


def converged(bed: FederationBed) -> bool:
    dates = {n: set(bed.decrements(n).dates) for n in bed.names}
    union = set().union(*dates.values())
    return all(d == union for d in dates.values())


def pick_seed() -> int:
    given = os.environ.get("MEMORIA_FAULT_SEED")
    return int(given) if given else random.SystemRandom().randrange(1 << 31)


def inject(bed: FederationBed, rng: random.Random, kind: str, target: str) -> str:
    """Apply one fault for a random while and heal it; say what was done."""
    hold = rng.uniform(1.0, 5.0)
    others = [n for n in bed.names if n != target]
    if kind == "kill-cluster":
        bed.kill_cluster(target)
        time.sleep(hold)
        bed.restart_cluster(target)
        return f"killed cluster {target} for {hold:.1f}s"
    if kind == "isolate":
        bed.isolate(target)
        time.sleep(hold)
        bed.heal_all()
        return f"cut {target} off both ways for {hold:.1f}s"
    if kind == "cut-one-way":
        peer = rng.choice(others)
        a, b = (target, peer) if rng.random() < 0.5 else (peer, target)
        bed.cut(a, b)
        time.sleep(hold)
        bed.heal(a, b)
        return f"cut {a} -> {b} for {hold:.1f}s"
    if kind == "pause-apiserver":
        bed.pause_apiserver(target)
        time.sleep(hold)
        bed.resume_apiserver(target)
        return f"paused kube-apiserver {target} for {hold:.1f}s"
    if kind == "kill-operator":
        bed.kill_operator(target)
        time.sleep(hold)
        bed.start_operator(target)
        return f"killed operator {target} for {hold:.1f}s"
    # skew: within the bound, kept until the next skew round puts the clock back
    seconds = round(rng.uniform(-SKEW, SKEW) * 0.9, 2)
    for name in bed.names:
        if bed.clusters[name].skew and name != target:
            bed.skew_clock(name, 0.0)
    bed.skew_clock(target, seconds)
    return f"operator {target} restarted with its clock {seconds:+.2f}s off"


def test_quorum_leadership_under_random_faults(tmp_path: Path) -> None:
    seed = pick_seed()
    print(f"\nfault test: seed {seed}, {ROUNDS} rounds (replay: MEMORIA_FAULT_SEED={seed})")
    rng = random.Random(seed)
    started = time.monotonic()
    kinds: Counter[str] = Counter()
    with FederationBed(tmp_path, bound=3, max_clock_skew=SKEW) as bed:
        wait_until(lambda: leader(bed), 60, "a first leader")
        with bed.recording():
            for number in range(1, ROUNDS + 1):
                current = leader(bed)
                # most faults hit the leader's cluster: that is where failover happens
                target = current if current and rng.random() < 0.65 else rng.choice(list(bed.names))
                kind = rng.choice(KINDS)
                kinds[kind] += 1
                what = inject(bed, rng, kind, target)
                now = wait_until(lambda: leader(bed), 30, f"a leader after round {number}")
                date = bed.advance_day()
                wait_until(partial(ran, bed, now, date), 20, f"{now} to decrement {date}")
                print(
                    f"round {number:2d}: {what}; leader before {current}, after {now}; "
                    f"{date} decremented"
                )
                time.sleep(rng.uniform(0.2, 1.5))
            # nothing lost: once the faults are over, every store has every date (a decrement
            # kept because its token was ahead of a cluster's Lease is applied when it catches
            # up; a region that was down catches up from the broker's journal)
            wait_until(partial(converged, bed), 60, "every store to hold every date")
        # no overlap at all is allowed while the clocks stay within the bound (the design's
        # claim): only the sampling granularity is forgiven, not the skew bound itself
        violations = bed.check(bound=LIVENESS_BOUND, skew=0.0)
        stores = bed.stores()
    elapsed = time.monotonic() - started
    for name, view in sorted(stores.items()):
        print(f"store {name}: {len(view.dates)} dates, probe x {view.probe and view.probe.x}")
    print(f"kinds: {dict(kinds)}; {elapsed:.0f}s in all")
    # two regions running one date (in their own stores) is reported, not failed: it is what
    # happens when a leader dies between running a date and publishing it; no store ran it twice
    fatal = [v for v in violations if v.kind != "two-runners"]
    for v in violations:
        print(f"  {'VIOLATION' if v in fatal else 'note'}: {v}")
    assert not fatal, f"seed {seed}: {len(fatal)} violation(s), first: {fatal[0]}"
    assert len({d for v in stores.values() for d in v.dates}) >= ROUNDS  # decrements happened
