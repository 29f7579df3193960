"""Plain Pub/Sub: SUBSCRIBE per subscription, the envelope, queue groups by a claim key.

At most once: Redis sends a message to the clients subscribed at that moment
and keeps nothing. A subscriber that is disconnected, or too slow for the
server's ``client-output-buffer-limit pubsub`` (the server then closes its
connection), misses what was published meanwhile.

Redis has no queue groups for Pub/Sub: every member of a group receives the
message and asks the server (one Lua script, one round trip per message and
member) whether it is the one to handle it. The members of a group are a sorted
set of heartbeats (``microbroker:members:<channel>:<group>``, each renewed every
third of ``group_member_ttl``); the message's claim id, hashed, picks one of the
live members, which also sets ``microbroker:claim:<group>:<id>`` NX (for
``group_claim_ttl`` seconds), so that two members whose views differ for a
moment never both handle it. A member that died is dropped from the set after
``group_member_ttl``: what was given to it meanwhile is lost (at most once).

A subscription has a connection of its own; after a lost connection it
subscribes again on a new one. ``subscribe()`` returns once the server has
confirmed the SUBSCRIBE.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import zlib
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub

from microbroker.transport import (
    Delivery,
    EnvelopeError,
    Handler,
    Mailbox,
    Message,
    Overflow,
    PublishError,
    Subscriber,
    backoff,
    decode_envelope,
    report_error,
)

from ._connection import LOST
from ._fields import without_claim_id
from ._streams import consumer_name
from .options import RedisOptions

#: KEYS: the members, the claim key; ARGV: this member, the hash, the claim's ttl (ms).
_CLAIM = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local members = redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')
if #members > 0 then
  table.sort(members)
  if members[(tonumber(ARGV[2]) % #members) + 1] ~= ARGV[1] then
    return 0
  end
end
if redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[3]) then
  return 1
end
return 0
"""

_JOIN = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
return 1
"""


class PubSubDelivery(Delivery):
    """A Pub/Sub message: nothing to acknowledge, nothing to redeliver."""

    __slots__ = ()
    acks_locally = True


class PubSubSubscriber(Subscriber):
    """A subscription: its own connection, SUBSCRIBE, a reader and a mailbox."""

    def __init__(
        self,
        topic: str,
        deliver: Handler,
        *,
        queue: str | None,
        auto_ack: bool,
        client: aioredis.Redis,
        options: RedisOptions,
        on_unsubscribe: Callable[[PubSubSubscriber], None] | None = None,
    ) -> None:
        super().__init__(topic, queue, auto_ack)
        self._deliver = deliver
        self._client = client
        self._options = options
        self._on_unsubscribe = on_unsubscribe
        self.channel = options.key(topic)
        self._pubsub: PubSub | None = None
        self._active = False
        self._reader: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self.member = consumer_name()
        prefix = options.key_prefix
        self.members_key = f"{prefix}microbroker:members:{self.channel}:{queue}"
        self._claim = client.register_script(_CLAIM)
        self._join = client.register_script(_JOIN)
        self._mailbox: Mailbox[tuple[dict[str, str], bytes, str | None]] = Mailbox(
            self._handle,
            capacity=10_000,
            overflow=Overflow.BLOCK,
            name=f"redis pubsub subscription to {topic!r}",
        )

    @property
    def active(self) -> bool:
        return self._active

    async def start(self) -> None:
        if self.queue is not None:
            await self._beat()
        self._pubsub = await self._subscribe()
        self._active = True
        if self.queue is not None:
            self._heartbeat = asyncio.get_running_loop().create_task(
                self._beating(), name=f"redis pubsub group member of {self.channel!r}"
            )
        self._reader = asyncio.get_running_loop().create_task(
            self._read(), name=f"redis pubsub reader of {self.channel!r}"
        )

    async def _subscribe(self) -> PubSub:
        """A new connection SUBSCRIBEd to the channel, once the server has confirmed it."""
        pubsub = self._client.pubsub()
        try:
            await pubsub.subscribe(self.channel)
            deadline = time.monotonic() + self._options.socket_timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"redis did not confirm SUBSCRIBE {self.channel!r}")
                reply = await pubsub.get_message(timeout=left)
                if reply is not None and reply["type"] == "subscribe":
                    return pubsub
        except BaseException:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]
            raise

    async def _beat(self) -> None:
        ttl = int(self._options.group_member_ttl * 1000)
        await self._join(keys=[self.members_key], args=[self.member, ttl])

    async def _beating(self) -> None:
        while self._active:
            await asyncio.sleep(self._options.group_member_ttl / 3)
            try:
                await self._beat()
            except LOST:
                continue

    async def _read(self) -> None:
        failures = 0
        while self._active:
            pubsub = self._pubsub
            try:
                if pubsub is None:
                    pubsub = self._pubsub = await self._subscribe()
                reply = await pubsub.get_message(timeout=self._options.block)
                failures = 0
            except asyncio.CancelledError:
                raise
            except LOST:
                failures += 1
                if pubsub is not None:
                    self._pubsub = None
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]
                o = self._options
                await asyncio.sleep(
                    backoff(failures, o.reconnect_delay, 2.0, o.max_reconnect_delay)
                )
                continue
            if reply is None or reply.get("type") != "message":
                continue
            await self._accept(reply["data"])

    async def _accept(self, data: Any) -> None:
        try:
            headers, body = decode_envelope(data)
        except EnvelopeError:
            # Not microbroker's (a redis-cli PUBLISH): the payload as the body, no headers.
            headers, body = {}, bytes(data)
        headers, claim_id = without_claim_id(headers)
        while True:
            try:
                await self._mailbox.put((headers, body, claim_id))
                return
            except PublishError:
                continue

    async def _handle(self, item: tuple[dict[str, str], bytes, str | None]) -> None:
        headers, body, claim_id = item
        if self.queue is not None and claim_id is not None:
            key = f"{self._options.key_prefix}microbroker:claim:{self.queue}:{claim_id}"
            try:
                won = await self._claim(
                    keys=[self.members_key, key],
                    args=[
                        self.member,
                        zlib.crc32(claim_id.encode()),
                        int(self._options.group_claim_ttl * 1000),
                    ],
                )
            except LOST as exc:
                report_error(exc, None)
                return  # at most once: without the claim, nobody can tell who handles it
            if not won:
                return
        await self._deliver(PubSubDelivery(self.topic, Message(body, headers), queue=self.queue))

    async def unsubscribe(self) -> None:
        if not self._active:
            await self._mailbox.close()  # never started, or already closed: harmless
            return
        self._active = False
        if self._on_unsubscribe is not None:
            self._on_unsubscribe(self)
        for task in (self._reader, self._heartbeat):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        if self.queue is not None:
            with contextlib.suppress(*LOST):
                async with asyncio.timeout(self._options.connect_timeout):
                    await self._client.zrem(self.members_key, self.member)
        # At most once: what was received and not handled yet is dropped.
        await self._mailbox.close()
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]
