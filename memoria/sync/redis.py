"""Redis backend: the guide's plain PUBLISH on the channel, plus a Stream as the replay journal.

Every event is written twice, atomically, by one Lua call per batch: ``XADD <channel>:journal``
(capped, approximate MAXLEN) and ``PUBLISH <channel>``. The published message is the
reference-shaped event with one extra key in front, ``stream_id`` (its Stream entry): reference
subscribers read it as the event and ignore that key.

Our subscribers SUBSCRIBE to the channel and read the Stream:

* a message with ``stream_id`` is one of ours and is in the Stream: it is only a hint to read
  the Stream from the last position applied, which is where events and positions come from, so
  a message forged or replayed on the channel can never move a subscriber's position, and after
  any gap (a broker restart, a subscriber that was away) the Stream brings back what was missed;
* any other message is a reference publisher's (no Stream, no event id): it is handed over at
  once without a position, and its content-derived id makes a repeat harmless. Like the
  reference's own subscribers, ours miss such messages while disconnected: plain pub/sub keeps
  nothing.

Reads work on a ``replicaof`` Redis, the guide's region-B topology (PUBLISH and XADD both reach
the replica). A replica refuses writes, so events go to its primary instead, found with ``ROLE``
(same credentials, same database): region B's memories reach region A while B reads locally. If
the replica has lost its primary (region A's Redis is down), the events wait in the outbox
unless this region may promote the replica (``may_promote``: it holds the scheduler Lease after
a failover and ``sync.replica_promotion`` is ``leader``): then ``REPLICAOF NO ONE`` makes it the
primary and the queue drains. Run Redis with ``appendonly yes`` (as the guide's compose file
does): the Stream is only as durable as Redis itself.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.client import PubSub
from redis.retry import Retry

from ..errors import BrokerRefused, BrokerUnavailable
from ..settings import mask_url
from .base import BEGINNING, BatchHandler, Subscription, SyncBackend
from .events import Delivery, decode
from .trust import CATCH_UP_BYTES, MAX_EVENT_BYTES

# KEYS[1]: the Stream; ARGV[1]: the channel; ARGV[2]: MAXLEN; ARGV[3..]: encoded events
_PUBLISH_SCRIPT = """
for i = 3, #ARGV do
  local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'event', ARGV[i])
  redis.call('PUBLISH', ARGV[1], '{"stream_id":"' .. id .. '",' .. string.sub(ARGV[i], 2))
end
return #ARGV - 2
"""
# Reads the Stream after a position, bounded in bytes, on a primary or a read-only replica.
# KEYS[1]: the Stream; ARGV[1]: read after this id; ARGV[2]: at most this many entries;
# ARGV[3]: an entry over this many bytes comes back as its size, not its content; ARGV[4]:
# no more entries once those returned hold this many bytes (the first always comes).
# Returns {first id the Stream still holds, 1 if stopped by the budget, id, event, id, ...}.
_READ_SCRIPT = """#!lua flags=no-writes
local out = {'0-0', 0}
if redis.call('EXISTS', KEYS[1]) == 0 then return out end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
for i = 1, #info, 2 do
  if info[i] == 'recorded-first-entry-id' then out[1] = info[i + 1] end
end
local entries = redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', ARGV[2])
local limit, budget, used = tonumber(ARGV[3]), tonumber(ARGV[4]), 0
for _, entry in ipairs(entries) do
  local event, fields = '', entry[2]
  for j = 1, #fields, 2 do
    if fields[j] == 'event' then event = fields[j + 1] end
  end
  if #event > limit then
    out[#out + 1] = entry[1]
    out[#out + 1] = #event
  else
    if used > 0 and used + #event > budget then
      out[2] = 1
      break
    end
    used = used + #event
    out[#out + 1] = entry[1]
    out[#out + 1] = event
  end
end
return out
"""
#: how our messages on the channel begin (the rest is the event)
STREAM_MARK = '{"stream_id":"'
log = logging.getLogger("memoria.sync")
_BROKEN = (redis.ConnectionError, redis.TimeoutError, OSError)
_FIELD = "event"
_BATCH = 1000  # Stream entries read, and channel messages taken, at a time

log = logging.getLogger("memoria.sync")


def url_at(url: str, host: str, port: int) -> str:
    """``url`` with its host and port replaced (credentials, database and options kept); a
    ``unix://`` URL becomes ``redis://`` (a replica's primary is always reached over TCP)."""
    parts = urlsplit(url)
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if parts.username is not None or parts.password is not None:
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@{netloc}"
    scheme = "redis" if parts.scheme == "unix" else parts.scheme
    path = parts.path if parts.scheme != "unix" else ""
    return urlunsplit((scheme, netloc, path, parts.query, ""))


def _client(url: str, socket_timeout: float) -> redis.Redis:
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=socket_timeout,
        socket_connect_timeout=2,
        socket_keepalive=True,
        # fail fast: the outbox and the listener loop do the retrying, with backoff
        retry=Retry(NoBackoff(), 0),
        health_check_interval=15,
        # RESP2: a channel message is a plain reply the connection reads in ~4 us, where
        # RESP3 push handling and PubSub.get_message cost 30-50 us each, which capped a
        # subscriber at half the rate of our Stream
        protocol=2,
    )


def _refusal_reason(exc: redis.ResponseError) -> str:
    """A metric label from Redis's error code (``WRONGTYPE``, ``OOM``, ``NOPERM``, ...)."""
    code = str(exc).split(" ", 1)[0]
    return re.sub(r"[^a-z_]", "", code.lower()) or "refused"


class _RedisSubscription(Subscription):
    def __init__(
        self, backend: RedisSyncBackend, handler: BatchHandler, after: str | None, block_ms: int
    ) -> None:
        super().__init__(f"redis-listener[{backend.channel}]", handler, after)
        self.backend = backend
        self.block = block_ms / 1000
        self.client: redis.Redis | None = None
        self._trim_reported: str | None = None

    def session(self) -> None:
        client = _client(self.backend.url, socket_timeout=self.block + 5)
        pubsub = client.pubsub()  # type: ignore[no-untyped-call]
        self.client = client
        try:
            pubsub.subscribe(self.backend.channel)
            # wait for Redis to confirm: once "connected", every PUBLISH reaches us
            confirm = pubsub.get_message(timeout=5)
            if not confirm or confirm.get("type") != "subscribe":
                raise redis.ConnectionError(f"SUBSCRIBE not confirmed: {confirm!r}")
            stream = self.backend.stream
            if self.position is None:  # "from now": pin it to the current end at first connect
                last: Any = client.xrevrange(stream, count=1)
                self.position = str(last[0][0]) if last else "0-0"
            self.connected()
            self.hand_over_live([])  # what a failed handler left
            backlog = True  # catch up first
            while not self.stopping.is_set():
                direct, heard = self._listen(pubsub, wait=0 if backlog else self.block)
                self.hand_over_live(direct)
                if backlog or heard or not direct:
                    # one Stream batch per turn, so the channel is drained between batches of
                    # a long catch-up and Redis never has to drop us for a full output buffer
                    backlog = self._read_stream(client)
        finally:
            pubsub.close()
            client.close()

    def _listen(self, pubsub: PubSub, wait: float) -> tuple[list[Delivery], bool]:
        """(reference messages to apply, whether one of ours was heard) from the channel.

        Reads the subscribed connection's replies directly (``[kind, channel, data]``), the
        cheap way; a message of ours is recognised by its first bytes, never parsed here.
        """
        direct: list[Delivery] = []
        heard = False
        conn = pubsub.connection
        if conn is None:
            raise redis.ConnectionError("the subscription lost its connection")
        if not conn.can_read(timeout=wait):
            return direct, heard
        for _ in range(_BATCH):
            reply: Any = conn.read_response()
            if isinstance(reply, list) and len(reply) == 3 and reply[0] == "message":
                data = reply[2]
                if data.startswith(STREAM_MARK):
                    heard = True
                else:
                    direct.append(decode(data, None))
            if not conn.can_read(timeout=0):
                break
        return direct, heard

    def _read_stream(self, client: redis.Redis) -> bool:
        """Hand over the next Stream entries (at most CATCH_UP_BYTES of them); True if more
        may follow at once. An entry over MAX_EVENT_BYTES is handed over as such, unread."""
        start = "0-0" if self.position in (None, BEGINNING) else str(self.position)
        reply: Any = self.backend.read_script(
            keys=[self.backend.stream],
            args=[start, _BATCH, MAX_EVENT_BYTES, CATCH_UP_BYTES],
            client=client,
        )
        first, stopped, flat = str(reply[0]), bool(reply[1]), reply[2:]
        self._check_trimmed(start, first)
        batch = []
        for eid, body in zip(flat[::2], flat[1::2], strict=True):
            if isinstance(body, int):
                error = f"{body} bytes, over {MAX_EVENT_BYTES}"
                batch.append(Delivery(None, str(eid), error, None, "oversized"))
            else:
                batch.append(decode(body, str(eid)))
        self.hand_over(batch)
        return stopped or len(batch) == _BATCH

    def _check_trimmed(self, position: str, first: str) -> None:
        """Say so when the Stream no longer holds what follows our position: MAXLEN trimmed
        it while this region was away or behind, and those events are gone for it."""
        if position == "0-0" or first == "0-0" or _entry_id(first) <= _entry_id(position):
            return
        if self._trim_reported == first:
            return
        self._trim_reported = first
        log.error(
            "%s: the Stream was trimmed past this region's position %s (it now starts at "
            "%s): the events in between are lost here; raise the journal's length or keep "
            "regions closer to it",
            self.name,
            position,
            first,
        )
        self.lost("trimmed", 1)


def _entry_id(text: str) -> tuple[int, int]:
    ms, _, seq = text.partition("-")
    try:
        return int(ms), int(seq or 0)
    except ValueError:
        return (0, 0)


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
        self.read_script = self._publisher.register_script(_READ_SCRIPT)
        self._subs: list[Subscription] = []
        self._primary: tuple[str, redis.Redis] | None = None  # (url, client) past a replica
        self.promoted = False  # this backend promoted its replica (REPLICAOF NO ONE)

    @property
    def source_id(self) -> str:
        return f"redis|{mask_url(self.url)}|{self.stream}"

    def publish_encoded(self, events: Sequence[tuple[str, str]]) -> None:
        if not events:
            return
        where = f"redis at {mask_url(self.url)}"
        try:
            try:
                self._send(events, self._publisher)
            except redis.ReadOnlyError:
                self._send(events, self._writable(where))
        except redis.ReadOnlyError:
            raise BrokerRefused(
                f"{where} is a read-only replica and so is what it names as its primary; "
                "events stay queued until one is promoted or the URL points at a primary",
                "read_only",
            ) from None
        except redis.exceptions.NoPermissionError as exc:
            raise BrokerRefused(
                f"{where} refuses this user ({exc}); grant it XADD and PUBLISH on the channel's "
                "keys, or use another user; events stay queued until then",
                "no_permission",
            ) from None
        except redis.ResponseError as exc:  # WRONGTYPE (the Stream key is taken), OOM, ...
            raise BrokerRefused(
                f"{where} refuses the events: {exc}; they stay queued until that is fixed",
                _refusal_reason(exc),
            ) from None
        except _BROKEN as exc:
            raise BrokerUnavailable(f"{where}: {exc}") from None

    def _send(self, events: Sequence[tuple[str, str]], client: redis.Redis) -> None:
        # one command per batch: cheaper to pack and parse than 2 commands per event, and the
        # batch lands in the Stream and on the channel atomically
        self._script(
            keys=[self.stream],
            args=[self.channel, self.journal_max_events, *(raw for _, raw in events)],
            client=client,
        )

    def _writable(self, where: str) -> redis.Redis:
        """Where events go when our Redis is a read-only replica: its primary while the
        replica is linked to it, else the replica itself once promoted (if we may)."""
        role: Any = self._publisher.role()
        if str(role[0]) != "slave":
            raise redis.ReadOnlyError("read-only, yet not a replica")
        host, port, link = str(role[1]), int(role[2]), str(role[3])
        if link == "connected":
            url = url_at(self.url, host, port)
            if self._primary is None or self._primary[0] != url:
                if self._primary is not None:
                    self._primary[1].close()
                self._primary = (url, _client(url, socket_timeout=5))
            return self._primary[1]
        if not self.may_promote():
            raise BrokerRefused(
                f"{where} is a read-only replica cut off from its primary {host}:{port} "
                f"(link {link}); events stay queued until the primary is back or the replica "
                "is promoted (the region holding the scheduler Lease does that when "
                "sync.replica_promotion is 'leader')",
                "read_only",
            )
        self._publisher.replicaof("NO", "ONE")
        self.promoted = True
        log.warning(
            "sync: %s was a replica of %s:%d, unreachable (link %s); this region leads, so it "
            "promoted it to primary (REPLICAOF NO ONE). Point the old primary at it "
            "(REPLICAOF) before that region rejoins, or its events stay on a separate broker",
            where,
            host,
            port,
            link,
        )
        return self._publisher

    def subscribe_batches(self, handler: BatchHandler, *, after: str | None = None) -> Subscription:
        sub = _RedisSubscription(self, handler, after, self.block_ms)
        sub.start()
        self._subs.append(sub)
        return sub

    def ping(self) -> None:
        try:
            self._publisher.ping()
        except redis.RedisError as exc:  # unreachable, a wrong password, no such database
            raise BrokerUnavailable(f"redis at {mask_url(self.url)}: {exc}") from None

    def journal_length(self) -> int:
        return int(self._publisher.xlen(self.stream))

    def close(self) -> None:
        self.close_publisher()
        for sub in self._subs:
            sub.close()
        self._subs.clear()
        self._publisher.close()
        if self._primary is not None:
            self._primary[1].close()
