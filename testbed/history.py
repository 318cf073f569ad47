"""What a federation test saw, and the rules it is judged by.

A :class:`History` holds who said it leads when (one :class:`Observation` per region per poll
of its ``/healthz``, on this machine's monotonic clock) and the faults the test injected
(:class:`Fault` windows: a cluster killed, an API server paused, an operator killed, a region
killed, a link cut). :class:`LeadershipRecorder` fills it from a thread while a test runs.

:func:`check` is pure: given a history, what each region's store says about its decrements
(:class:`StoreView`), a liveness bound and the clock skew allowed, it returns the
:class:`Violation` list, empty when all held:

* ``split-brain``: two regions both believed they led, at the same time, for longer than
  ``skew`` + the sampling granularity (measured on what was observed, so never more than the
  true overlap);
* ``double-decrement``: a store's ``decrement_log`` has a date more than once;
* ``probe-mismatch`` / ``probe-missing``: the probe memory's ``x_coord`` in a store is not its
  starting value minus the dates that store decremented after the probe was written (lower:
  a date decremented twice; higher: a decrement logged but not applied);
* ``two-runners``: one date was run by two different regions (in separate stores each store
  still decrements it once, so no memory is wrong, but two regions ran the same date as
  leaders);
* ``no-leader``: while a majority of clusters was up and connected, nobody led for longer than
  ``bound``.
"""

from __future__ import annotations

import itertools
import statistics
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

FaultKind = Literal["cluster", "apiserver", "operator", "region", "link"]
# faults that take a cluster out of the majority; a "link" fault separates two clusters
NODE_FAULTS: frozenset[str] = frozenset({"cluster", "apiserver", "operator", "region"})


@dataclass(frozen=True)
class Observation:
    t: float  # time.monotonic() of the answer (midpoint of the request)
    cluster: str
    leads: bool | None  # None: no answer (process down, timeout)


@dataclass
class Fault:
    """A fault window. ``link``: the operator of ``a`` cannot reach the API server of ``b``;
    the other kinds take cluster ``a`` (or a part of it) down. ``end`` is None while on."""

    kind: FaultKind
    a: str
    start: float
    b: str | None = None
    end: float | None = None

    def active(self, t: float) -> bool:
        return self.start <= t and (self.end is None or t < self.end)


@dataclass(frozen=True)
class Violation:
    kind: str
    detail: str
    start: float | None = None
    end: float | None = None

    def __str__(self) -> str:
        when = "" if self.start is None else f" [{self.start:.2f}, {self.end or 0:.2f}]"
        return f"{self.kind}{when}: {self.detail}"


@dataclass
class History:
    clusters: tuple[str, ...]
    interval: float = 0.05  # the recorder's pause between polls
    observations: list[Observation] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    notes: list[tuple[float, str]] = field(default_factory=list)  # what the bed did, when
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def observe(self, t: float, cluster: str, leads: bool | None) -> None:
        with self._lock:
            self.observations.append(Observation(t, cluster, leads))

    def note(self, text: str, t: float | None = None) -> None:
        with self._lock:
            self.notes.append((time.monotonic() if t is None else t, text))

    def fault_on(self, kind: FaultKind, a: str, b: str | None = None) -> None:
        """Open a fault window now (nothing if the same one is already open)."""
        with self._lock:
            if any(f.end is None and (f.kind, f.a, f.b) == (kind, a, b) for f in self.faults):
                return
            self.faults.append(Fault(kind, a, time.monotonic(), b))

    def fault_off(self, kind: FaultKind, a: str, b: str | None = None) -> None:
        """Close the open fault window(s) of that kind and place now."""
        now = time.monotonic()
        with self._lock:
            for f in self.faults:
                if f.end is None and (f.kind, f.a, f.b) == (kind, a, b):
                    f.end = now

    def span(self) -> tuple[float, float] | None:
        """First and last observation times."""
        with self._lock:
            if not self.observations:
                return None
            times = [o.t for o in self.observations]
        return min(times), max(times)


class LeadershipRecorder:
    """Polls ``leading(cluster)`` for every cluster, every ``history.interval`` seconds, in a
    thread, recording each answer in ``history``. A context manager."""

    def __init__(self, history: History, leading: Callable[[str], bool | None]) -> None:
        self.history = history
        self.leading = leading
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="leadership-recorder", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for cluster in self.history.clusters:
                before = time.monotonic()
                try:
                    leads = self.leading(cluster)
                except Exception:  # a region going away mid-request: no answer
                    leads = None
                self.history.observe((before + time.monotonic()) / 2, cluster, leads)
            self._stop.wait(self.history.interval)

    def start(self) -> LeadershipRecorder:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def __enter__(self) -> LeadershipRecorder:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class DecrementRow:
    date: str
    ran_by: str
    ran_at: str


@dataclass(frozen=True)
class ProbeReading:
    """The probe memory: written with ``x0`` when its store's last decrement was ``as_of``;
    ``x`` is its x_coord in the store read (None: not there)."""

    memory_id: str
    x0: float
    as_of: str
    x: float | None


@dataclass(frozen=True)
class StoreView:
    cluster: str
    log: tuple[DecrementRow, ...]
    probe: ProbeReading | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)

    @property
    def dates(self) -> list[str]:
        return sorted({r.date for r in self.log})


# -- the rules ------------------------------------------------------------------------------


def _by_cluster(observations: Iterable[Observation]) -> dict[str, list[Observation]]:
    out: dict[str, list[Observation]] = {}
    for o in sorted(observations, key=lambda o: o.t):
        out.setdefault(o.cluster, []).append(o)
    return out


def leading_runs(observations: Sequence[Observation]) -> list[tuple[float, float]]:
    """The stretches (first, last observation time) over which one region was seen leading
    at every poll; a poll saying "no" or not answering ends a stretch."""
    runs: list[tuple[float, float]] = []
    start: float | None = None
    last = 0.0
    for o in observations:
        if o.leads:
            if start is None:
                start = o.t
            last = o.t
        elif start is not None:
            runs.append((start, last))
            start = None
    if start is not None:
        runs.append((start, last))
    return runs


def sampling_granularity(history: History) -> float:
    """The 95th percentile of the time between two polls of one region (at least the
    recorder's interval): how finely the history can place a change."""
    gaps = [
        b.t - a.t
        for obs in _by_cluster(history.observations).values()
        for a, b in itertools.pairwise(obs)
    ]
    if len(gaps) < 2:
        return history.interval
    return max(history.interval, statistics.quantiles(gaps, n=20)[-1])


def split_brain(history: History, skew: float, granularity: float) -> list[Violation]:
    runs = {c: leading_runs(obs) for c, obs in _by_cluster(history.observations).items()}
    out = []
    for a, b in itertools.combinations(sorted(runs), 2):
        for (s1, e1), (s2, e2) in itertools.product(runs[a], runs[b]):
            start, end = max(s1, s2), min(e1, e2)
            if end - start > skew + granularity:
                out.append(
                    Violation(
                        "split-brain",
                        f"{a} and {b} both led for {end - start:.2f}s "
                        f"(allowed {skew:g}s skew + {granularity:.2f}s sampling)",
                        start,
                        end,
                    )
                )
    return out


def decrement_violations(stores: Mapping[str, StoreView]) -> list[Violation]:
    out = []
    runners: dict[str, set[str]] = {}
    for name, view in sorted(stores.items()):
        counts: dict[str, int] = {}
        for row in view.log:
            counts[row.date] = counts.get(row.date, 0) + 1
            runners.setdefault(row.date, set()).add(row.ran_by)
        for date, n in sorted(counts.items()):
            if n > 1:
                out.append(Violation("double-decrement", f"{name}: {date} logged {n} times"))
        probe = view.probe
        if probe is None:
            continue
        if probe.x is None:
            out.append(Violation("probe-missing", f"{name}: no probe memory {probe.memory_id}"))
            continue
        after = [d for d in view.dates if d > probe.as_of]
        expected = probe.x0 - len(after)
        if abs(probe.x - expected) > 1e-9:
            how = "more" if probe.x < expected else "fewer"
            out.append(
                Violation(
                    "probe-mismatch",
                    f"{name}: probe x_coord {probe.x:g}, expected {expected:g} ({probe.x0:g} "
                    f"minus {len(after)} dates after {probe.as_of or 'none'}): decremented "
                    f"{how} times than its decrement_log says",
                )
            )
    for date, who in sorted(runners.items()):
        if len(who) > 1:
            out.append(Violation("two-runners", f"{date} was run by {', '.join(sorted(who))}"))
    return out


def _majority_connected(clusters: Sequence[str], faults: Sequence[Fault], t: float) -> bool:
    down = {f.a for f in faults if f.kind in NODE_FAULTS and f.active(t)}
    cut = {frozenset((f.a, f.b)) for f in faults if f.kind == "link" and f.active(t)}
    up = [c for c in clusters if c not in down]
    need = len(clusters) // 2 + 1
    return any(
        all(frozenset(pair) not in cut for pair in itertools.combinations(group, 2))
        for size in range(need, len(up) + 1)
        for group in itertools.combinations(up, size)
    )


def healthy_windows(
    clusters: Sequence[str], faults: Sequence[Fault], start: float, end: float
) -> list[tuple[float, float]]:
    """The stretches of [start, end] during which a majority of ``clusters`` was up and every
    link between them worked (both ways)."""
    edges = {start, end}
    for f in faults:
        edges.update(t for t in (f.start, f.end) if t is not None and start < t < end)
    points = sorted(edges)
    windows: list[tuple[float, float]] = []
    for a, b in itertools.pairwise(points):
        if not _majority_connected(clusters, faults, (a + b) / 2):
            continue
        if windows and windows[-1][1] == a:
            windows[-1] = (windows[-1][0], b)
        else:
            windows.append((a, b))
    return windows


def leaderless_stretches(history: History, start: float, end: float) -> list[tuple[float, float]]:
    """The stretches of [start, end] during which no region's latest answer said it led."""
    latest: dict[str, bool] = {}
    out: list[tuple[float, float]] = []
    since: float | None = start
    for o in sorted(history.observations, key=lambda o: o.t):
        latest[o.cluster] = bool(o.leads)
        someone = any(latest.values())
        if someone and since is not None:
            if o.t > since:
                out.append((since, o.t))
            since = None
        elif not someone and since is None:
            since = o.t
    if since is not None and end > since:
        out.append((since, end))
    return out


def liveness(history: History, bound: float) -> list[Violation]:
    span = history.span()
    if span is None:
        return []
    start, end = span
    windows = healthy_windows(history.clusters, history.faults, start, end)
    out = []
    for ws, we in windows:
        for ls, le in leaderless_stretches(history, start, end):
            s, e = max(ws, ls), min(we, le)
            if e - s > bound:
                out.append(
                    Violation(
                        "no-leader",
                        f"nobody led for {e - s:.2f}s while a majority was up and connected "
                        f"(bound {bound:g}s)",
                        s,
                        e,
                    )
                )
    return out


def check(
    history: History,
    stores: Mapping[str, StoreView],
    bound: float,
    skew: float,
    granularity: float | None = None,
) -> list[Violation]:
    """Every violation of the rules in this module's docstring; empty when all held.
    ``granularity`` defaults to :func:`sampling_granularity` of the history."""
    g = sampling_granularity(history) if granularity is None else granularity
    return [
        *split_brain(history, skew, g),
        *decrement_violations(stores),
        *liveness(history, bound),
    ]
