"""Regions inside this process for the sync and decrement tests: real stores, real brokers, the
real region runtime, and no HTTP server or Kubernetes around them."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from memoria.metrics import RuntimeMetrics
from memoria.runtime import Runtime
from memoria.settings import DatabaseSettings, MemoriaSettings, SyncSettings
from memoria.store import MemoryStore
from memoria.sync.link import SyncLink
from memoria.writes import WriteService

from .processes import wait_until


@dataclass
class Broker:
    """How to reach one backend from each region (URLs may differ: a Redis replica)."""

    backend: str
    publish_url: str
    subscribe_url: str
    table: str | None = None
    channel: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:10]}")

    def sync(
        self, *, reader: bool, floor: int = -15, ceiling: int = 15, **extra: Any
    ) -> SyncSettings:
        return SyncSettings.model_validate(
            {
                "enabled": True,
                "backend": self.backend,
                "connection_url": (self.subscribe_url if reader else self.publish_url) or None,
                "channel": self.channel,
                "table": self.table,
                "privacy_floor": floor,
                "privacy_ceiling": ceiling,
                **extra,
            }
        )


class Region:
    """One region's runtime without an HTTP server; its scheduler is disabled (the tests run
    decrements themselves)."""

    def __init__(self, name: str, store_url: str, sync: SyncSettings) -> None:
        self.name = name
        self.settings = MemoriaSettings(
            region=name,
            sync=sync,
            database=DatabaseSettings(connection_string=SecretStr(store_url)),
        )
        self.past_metrics: list[RuntimeMetrics] = []  # of earlier incarnations (restarts)
        self._build()

    def _build(self) -> None:
        self.runtime = Runtime(self.settings, disable_schedulers=True)
        self.store: MemoryStore = self.runtime.store
        self.metrics: RuntimeMetrics = self.runtime.metrics
        self.sync: SyncLink = self.runtime.sync
        self.writes: WriteService = self.runtime.writes

    def start(self) -> Region:
        self.runtime.start()
        return self

    def stop(self, flush_timeout: float = 5.0) -> None:
        self.runtime.stop(flush_timeout)

    def restart(self) -> None:
        """Stop and start again on the same store (same cursor, same outbox)."""
        self.stop()
        self.past_metrics.append(self.metrics)
        self._build()
        self.start()

    def write(self, text: str, y: float, namespace: str = "default", x: float = 0.0) -> str:
        memory = self.writes.create_memory(
            namespace=namespace, text=text, x_coord=x, y_coord=y, z_coord=0.0
        )
        return memory.id

    def ids(self) -> set[str]:
        return {m.id for m in self.store.list_memories(limit=1_000_000)}

    def count(self, metric: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(metric, labels or None)
        return value or 0.0

    def total(self, metric: str, **labels: str) -> float:
        """``metric`` summed over this region's incarnations (restarts reset counters)."""
        past = sum(
            m.registry.get_sample_value(metric, labels or None) or 0.0 for m in self.past_metrics
        )
        return past + self.count(metric, **labels)


def sqlite_url(tmp: Path, name: str) -> str:
    return f"sqlite:///{tmp / f'{name}.db'}"


def seed_memories(store: MemoryStore, n: int) -> None:
    """``n`` memories at x = y = z = 0 in namespace ``d``, written as a region of origin
    ``seed`` and published nowhere (no sync event)."""
    for i in range(n):
        store.create_memory(
            namespace="d",
            text=f"m{i}",
            x_coord=0.0,
            y_coord=0.0,
            z_coord=0.0,
            origin="seed",
            make_event=lambda _m: None,
        )


@contextmanager
def two_regions(
    broker: Broker,
    tmp: Path,
    *,
    a_range: tuple[int, int] = (-15, 15),
    b_range: tuple[int, int] = (-15, 15),
) -> Iterator[tuple[Region, Region]]:
    a = Region(
        "region-a",
        sqlite_url(tmp, f"a-{broker.channel}"),
        broker.sync(reader=False, floor=a_range[0], ceiling=a_range[1]),
    )
    b = Region(
        "region-b",
        sqlite_url(tmp, f"b-{broker.channel}"),
        broker.sync(reader=True, floor=b_range[0], ceiling=b_range[1]),
    )
    a.start()
    b.start()
    try:
        # Without a journal to replay (PostgreSQL NOTIFY with no table) a region never hears
        # what was published before its listener connected: start the test once both listen.
        wait_until(
            lambda: all(r.sync.health().listener_connected is not False for r in (a, b)),
            what="both regions' listeners",
        )
        yield a, b
    finally:
        a.stop(flush_timeout=1)
        b.stop(flush_timeout=1)
