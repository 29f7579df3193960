"""The Redis broker: the five members a transport implements, composed from its parts.

- ``_connection``: the redis-py client, TLS, and a command retried across a lost connection;
- ``_fields``: a message as stream entry fields, or in the envelope for Pub/Sub;
- ``_streams``: Redis Streams and consumer groups (the default mode, at least once);
- ``_pubsub``: plain Pub/Sub (``mode="pubsub"``, at most once).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions

from microbroker.transport import (
    Broker,
    Capabilities,
    Handler,
    Message,
    NotConnected,
    PublishError,
    Subscriber,
    encode_envelope,
    new_message_id,
    report_error,
)

from ._connection import LOST, connect_error, make_client, retrying
from ._fields import to_fields, with_claim_id
from ._pubsub import PubSubSubscriber
from ._streams import StreamSubscriber
from .options import DEFAULT_ADDRESS, RedisOptions

#: What a command can raise: a lost connection, or the server's refusal.
FAILED: tuple[type[BaseException], ...] = (*LOST, redis.exceptions.RedisError)


def capabilities_for(options: RedisOptions) -> Capabilities:
    """What each mode delivers (see the README's guarantees)."""
    if options.mode == "pubsub":
        return Capabilities(
            queue_groups=True,
            ack=False,
            at_least_once=False,
            persistence=False,
            ordering=True,
            reconnect=True,
            max_message_size=options.max_message_size,
        )
    return Capabilities(
        queue_groups=True,
        ack=True,
        at_least_once=True,
        # A clean restart keeps streams and groups (the stock config saves on shutdown);
        # a kill -9 keeps what the last save or the append-only file has (see the README).
        persistence=True,
        ordering=True,
        reconnect=True,
        max_message_size=options.max_message_size,
    )


class RedisBroker(Broker):
    """Redis: Streams with consumer groups (default), or Pub/Sub as go-micro's plugin has it.

    ``address`` is ``redis://[user:password@]host:port/db`` (``rediss://`` for
    TLS); every other option is a field of :class:`~microbroker_redis.RedisOptions`,
    also read from ``MICRO_REDIS_<OPTION>``.
    """

    name = "redis"
    default_address = DEFAULT_ADDRESS
    capabilities = capabilities_for(RedisOptions())

    def __init__(self, address: str | None = None, **options: Any) -> None:
        settings = RedisOptions.from_arguments(options)
        super().__init__(address, **{k: v for k, v in options.items() if v is not None})
        self.settings = settings
        self.capabilities = capabilities_for(settings)
        self._endpoint = settings.endpoint(self.address)
        self._client: aioredis.Redis | None = None
        self._closing = False
        self._sending = 0
        self._idle: asyncio.Event | None = None
        self._subscribers: list[StreamSubscriber | PubSubSubscriber] = []

    @property
    def connected(self) -> bool:
        return self._client is not None and not self._closing

    async def connect(self) -> None:
        if self.connected:
            return
        client = make_client(self.settings, self._endpoint)
        wait = self.settings.connect_timeout + self.settings.socket_timeout
        try:
            async with asyncio.timeout(wait):
                await client.ping()
        except FAILED as exc:
            with contextlib.suppress(Exception):
                await client.aclose()
            raise connect_error(self._endpoint, exc, self.settings.connect_timeout) from exc
        self._client = client
        self._closing = False
        self._idle = asyncio.Event()
        self._idle.set()

    async def disconnect(self) -> None:
        client = self._client
        if client is None or self._closing:
            return
        self._closing = True
        subscribers, self._subscribers = self._subscribers, []
        # 1-2. each subscription stops reading and lets its running handler finish;
        # what it had not handled stays pending in its group (Streams).
        await asyncio.gather(*(s.unsubscribe() for s in subscribers), return_exceptions=True)
        # 3. the publishes in flight finish (they retry for publish_timeout at most).
        idle = self._idle
        if idle is not None and not idle.is_set():
            try:
                async with asyncio.timeout(self.settings.publish_timeout):
                    await idle.wait()
            except TimeoutError:
                report_error(
                    PublishError(
                        f"redis broker closed with {self._sending} publish(es) not answered "
                        f"after {self.settings.publish_timeout}s (publish_timeout)"
                    ),
                    None,
                )
        # 4. the connections.
        self._client = None
        with contextlib.suppress(Exception):
            await client.aclose()

    async def send(self, topic: str, message: Message, **options: Any) -> None:
        if options:
            raise TypeError(
                f"the redis broker takes no publish options (got {', '.join(sorted(options))})"
            )
        client = self._client
        if client is None or self._closing:
            raise NotConnected("redis broker is not connected")
        settings = self.settings
        key = settings.key(topic)
        if settings.mode == "pubsub":
            payload = encode_envelope(
                with_claim_id(message.headers, new_message_id()), message.body
            )

            def command() -> Any:
                return client.publish(key, payload)
        else:
            fields = to_fields(message)
            maxlen = settings.maxlen or None

            def command() -> Any:
                return client.xadd(key, fields, maxlen=maxlen, approximate=True)  # type: ignore[arg-type]

        self._sending += 1
        if self._idle is not None:
            self._idle.clear()
        try:
            await retrying(settings, command, timeout=settings.publish_timeout)
        except LOST as exc:
            if self._closing:
                raise NotConnected(f"redis broker closed while publishing to {topic!r}") from exc
            raise PublishError(
                f"redis publish to {topic!r} failed for {settings.publish_timeout}s "
                f"(publish_timeout): {exc}"
            ) from exc
        except redis.exceptions.RedisError as exc:
            raise PublishError(f"redis refused the publish to {topic!r}: {exc}") from exc
        finally:
            self._sending -= 1
            if self._sending == 0 and self._idle is not None:
                self._idle.set()

    async def receive(
        self,
        topic: str,
        deliver: Handler,
        *,
        queue: str | None,
        auto_ack: bool,
        **options: Any,
    ) -> Subscriber:
        if options:
            raise TypeError(
                f"the redis broker takes no subscribe options (got {', '.join(sorted(options))})"
            )
        client = self._client
        if client is None or self._closing:
            raise NotConnected("redis broker is not connected")
        if queue is not None and not queue:
            raise ValueError("a queue group needs a name")
        subscriber: StreamSubscriber | PubSubSubscriber
        kind = PubSubSubscriber if self.settings.mode == "pubsub" else StreamSubscriber
        subscriber = kind(
            topic,
            deliver,
            queue=queue,
            auto_ack=auto_ack,
            client=client,
            options=self.settings,
            on_unsubscribe=self._forget,
        )
        try:
            await subscriber.start()
        except FAILED as exc:
            await subscriber.unsubscribe()
            from microbroker import MicrobrokerError

            raise MicrobrokerError(f"redis cannot subscribe to {topic!r}: {exc}") from exc
        self._subscribers.append(subscriber)
        return subscriber

    def _forget(self, subscriber: Any) -> None:
        with contextlib.suppress(ValueError):
            self._subscribers.remove(subscriber)
