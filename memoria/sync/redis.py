"""Redis backend: pub/sub for the guide's live listeners, a Stream as the replay journal.

Every event is written twice in one pipeline: ``XADD <channel>:journal`` (capped, approximate
MAXLEN) and ``PUBLISH <channel>``. Our subscribers read the Stream only, with a blocking
``XREAD`` from their last position: that is both live (it returns as soon as an entry lands) and
replayable (after any gap they resume exactly where they stopped), so a broker restart or a
subscriber that was away loses nothing, which plain pub/sub cannot promise. Reads work on a
``replicaof`` Redis, the guide's region-B topology; publishing to a read-only replica fails and
the events wait in the publisher's outbox until that Redis is promoted.

Run Redis with ``appendonly yes`` (as the guide's compose file does): the Stream is only as
durable as Redis itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..errors import BrokerUnavailable
from ..settings import mask_url
from .base import BEGINNING, BatchHandler, Subscription, SyncBackend, decode

# KEYS[1]: the Stream; ARGV[1]: the channel; ARGV[2]: MAXLEN; ARGV[3..]: encoded events
_PUBLISH_SCRIPT = """
for i = 3, #ARGV do
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'event', ARGV[i])
  redis.call('PUBLISH', ARGV[1], ARGV[i])
end
return #ARGV - 2
"""
_BROKEN = (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError, OSError)
_FIELD = "event"


def _client(url: str, socket_timeout: float) -> redis.Redis:
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=socket_timeout,
        socket_connect_timeout=2,
        # fail fast: the outbox and the listener loop do the retrying, with backoff
        retry=Retry(NoBackoff(), 0),
        health_check_interval=15,
    )


class _RedisSubscription(Subscription):
    def __init__(
        self, backend: RedisSyncBackend, handler: BatchHandler, after: str | None, block_ms: int
    ) -> None:
        super().__init__(f"redis-listener[{backend.channel}]", handler, after)
        self.backend = backend
        self.block_ms = block_ms
        self.client: redis.Redis | None = None

    def session(self) -> None:
        client = _client(self.backend.url, socket_timeout=self.block_ms / 1000 + 5)
        self.client = client
        try:
            client.ping()
            stream = self.backend.stream
            if self.position is None:  # "from now": pin it to the current end at first connect
                last: Any = client.xrevrange(stream, count=1)
                self.position = str(last[0][0]) if last else "0-0"
            self.connected()
            while not self.stopping.is_set():
                start = "0-0" if self.position in (None, BEGINNING) else str(self.position)
                reply: Any = client.xread({stream: start}, count=1000, block=self.block_ms)
                for _name, entries in reply or ():
                    self.hand_over([decode(fields.get(_FIELD, ""), eid) for eid, fields in entries])
        finally:
            client.close()


class RedisSyncBackend(SyncBackend):
    name = "redis"

    def __init__(
        self,
        url: str,
        channel: str = "memoria-sync",
        *,
        journal_max_events: int = 1_000_000,
        block_ms: int = 500,
    ) -> None:
        self.url = url
        self.channel = channel
        self.stream = f"{channel}:journal"
        self.journal_max_events = journal_max_events
        self.block_ms = block_ms
        self._publisher = _client(url, socket_timeout=5)
        self._script = self._publisher.register_script(_PUBLISH_SCRIPT)
        self._subs: list[Subscription] = []

    @property
    def source_id(self) -> str:
        return f"redis|{mask_url(self.url)}|{self.stream}"

    def publish_encoded(self, events: Sequence[tuple[str, str]]) -> None:
        if not events:
            return
        try:
            # one command per batch: cheaper to pack and parse than 2 commands per event,
            # and the batch lands in the Stream and on the channel atomically
            self._script(
                keys=[self.stream],
                args=[self.channel, self.journal_max_events, *(raw for _, raw in events)],
            )
        except redis.ReadOnlyError:
            raise BrokerUnavailable(
                f"redis at {mask_url(self.url)} is a read-only replica; events stay queued "
                "until it is promoted or the URL points at a primary"
            ) from None
        except _BROKEN as exc:
            raise BrokerUnavailable(f"redis at {mask_url(self.url)}: {exc}") from None

    def subscribe_batches(self, handler: BatchHandler, *, after: str | None = None) -> Subscription:
        sub = _RedisSubscription(self, handler, after, self.block_ms)
        sub.start()
        self._subs.append(sub)
        return sub

    def ping(self) -> None:
        try:
            self._publisher.ping()
        except _BROKEN as exc:
            raise BrokerUnavailable(f"redis at {mask_url(self.url)}: {exc}") from None

    def journal_length(self) -> int:
        return int(self._publisher.xlen(self.stream))

    def close(self) -> None:
        for sub in self._subs:
            sub.close()
        self._subs.clear()
        self._publisher.close()
