"""The embedded default: an in-process bus, for one process (tests, single-node use).

Each channel is a journal list guarded by a condition; positions are list indexes. Nothing
leaves the process, so it needs no connection URL and cannot be down.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import ClassVar

from .base import BEGINNING, BatchHandler, Subscription, SyncBackend
from .events import SyncEvent, decode


class _Channel:
    def __init__(self) -> None:
        self.journal: list[str] = []
        self.cond = threading.Condition()


class _MemorySubscription(Subscription):
    def __init__(self, channel: _Channel, name: str, handler: BatchHandler, after: str | None):
        with channel.cond:
            start = len(channel.journal) if after is None else int(after)
        super().__init__(name, handler, str(start))
        self.channel = channel

    def session(self) -> None:
        self.connected()
        while not self.stopping.is_set():
            start = int(self.position or 0)
            with self.channel.cond:
                if len(self.channel.journal) <= start:
                    self.channel.cond.wait(0.5)
                items = self.channel.journal[start : start + 1000]
            batch = [decode(raw, str(start + i + 1)) for i, raw in enumerate(items)]
            self.hand_over(batch)

    def wake(self) -> None:
        with self.channel.cond:
            self.channel.cond.notify_all()


class InProcessSyncBackend(SyncBackend):
    name = "memory"
    _channels: ClassVar[dict[str, _Channel]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, url: str = "", channel: str = "memoria-sync") -> None:
        self.channel_name = channel
        with self._lock:
            self.channel = self._channels.setdefault(channel, _Channel())
        self._subs: list[Subscription] = []

    @property
    def source_id(self) -> str:
        return f"memory|{self.channel_name}"

    def publish(self, event: SyncEvent) -> None:
        """At once: a list append needs no batching."""
        self.publish_encoded([(event.event_id, event.to_json())])

    def publish_encoded(self, events: Sequence[tuple[str, str]]) -> None:
        with self.channel.cond:
            self.channel.journal.extend(raw for _, raw in events)
            self.channel.cond.notify_all()

    def publish_raw(self, raw: str) -> None:
        """Put an arbitrary payload on the bus (tests of malformed input)."""
        with self.channel.cond:
            self.channel.journal.append(raw)
            self.channel.cond.notify_all()

    def subscribe_batches(self, handler: BatchHandler, *, after: str | None = None) -> Subscription:
        sub = _MemorySubscription(
            self.channel,
            f"memory-listener[{self.channel_name}]",
            handler,
            BEGINNING if after == BEGINNING else after,
        )
        sub.start()
        self._subs.append(sub)
        return sub

    def ping(self) -> None:
        return None

    def close(self) -> None:
        for sub in self._subs:
            sub.close()
        self._subs.clear()
