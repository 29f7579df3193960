"""Publishing: a message on the wire, publisher confirms, and publishes that outlive a reconnect.

A microbroker message becomes an AMQP publish to the topic exchange with the
topic as routing key; its headers are the AMQP headers table (string values,
names as given), ``Content-Type`` is also the ``content-type`` property and
``Micro-ID`` the ``message-id``, so that other AMQP clients read them as
their own. Messages are persistent (``persistent``).

With ``confirm`` (the default) the channel is in confirm mode and a publish
returns once the server has taken the message (written it to disk, for a
persistent message to a durable queue). A publish whose connection is lost
before its confirm is made again on the next connection (within
``publish_timeout``): at least once, a duplicate being possible.

A headers table must fit in one AMQP frame (``frame_max``, 128 KiB by
default) and each name in 128 bytes (pamqp cuts longer ones). A message
whose headers do not is sent *framed*: its headers, as JSON, at the front of the body, marked by the
``x-microbroker-framed`` header, so that every message within
``max_message_size`` is carried.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
from collections.abc import Coroutine
from typing import Any

import aiormq
import aiormq.abc
from pamqp.commands import Basic

from microbroker.transport import CONTENT_TYPE, ID, Message, NotConnected, PublishError, backoff

from ._connection import Link
from ._topology import (
    DELAY,
    FRAMED,
    SHORTSTR,
    DelayQueues,
    delay_exchange,
)
from .options import RabbitMQOptions

#: The longest header name pamqp encodes whole (it cuts longer ones to 128 bytes).
NAME_MAX = 128

#: What the other properties and the frame's own fields take at most, besides the headers.
_PROPERTIES_ROOM = 2048

#: Errors of a connection or channel that went away under a publish: publish again.
_LOST = (
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelClosed,
    aiormq.exceptions.ChannelInvalidStateError,
    ConnectionError,
    RuntimeError,  # aiormq: "<connection> closed" when a channel is opened on a closing one
)


def encode_headers(headers: dict[str, str], frame_max: int) -> tuple[dict[str, Any], bytes | None]:
    """The AMQP headers table for ``headers``, or (headers in the body) a framed prefix."""
    if not headers:
        return {}, None
    room = frame_max - _PROPERTIES_ROOM
    # An upper bound first (4 bytes per character, 6 of framing per entry): exact only if needed.
    bound = 0
    for name, value in headers.items():
        bound += len(name) + 4 * len(value) + 6
    if bound <= room and all(len(name) <= NAME_MAX for name in headers):
        return dict(headers), None
    exact = 4
    for name, value in headers.items():
        encoded = len(name.encode())
        if encoded > NAME_MAX:
            exact = room + 1
            break
        exact += encoded + len(value.encode()) + 6
    if exact <= room:
        return dict(headers), None
    prefix = json.dumps(headers, ensure_ascii=False, separators=(",", ":")).encode()
    return {FRAMED: "1"}, len(prefix).to_bytes(4, "big") + prefix


def decode_framed(body: bytes) -> tuple[dict[str, str], bytes]:
    """The headers and body of a framed message (see :func:`encode_headers`)."""
    size = int.from_bytes(body[:4], "big")
    headers = json.loads(body[4 : 4 + size].decode())
    return headers, body[4 + size :]


_LENGTH = struct.Struct(">I").pack


def encode_table(table: dict[str, Any]) -> bytes:
    """An AMQP field table of string values, in one pass; ``None`` for any other value."""
    parts: list[bytes] = []
    for name, value in table.items():
        if type(value) is not str:
            raise TypeError(name)
        key = name.encode()
        data = value.encode()
        parts += (bytes((len(key),)), key, b"S", _LENGTH(len(data)), data)
    payload = b"".join(parts)
    return _LENGTH(len(payload)) + payload


class Properties(Basic.Properties):
    """``Basic.Properties`` whose headers table of strings is encoded in one pass.

    pamqp's general encoder takes about 6 µs a header (it sorts, checks every
    type, and logs); a microbroker message's headers are all strings.
    """

    def encode_property(self, name: str, value: Any) -> bytes:
        if name == "headers":
            try:
                return encode_table(value)
            except TypeError:
                pass  # a header of another AMQP client (a number, a table): pamqp's encoder
        return super().encode_property(name, value)


def properties_for(
    headers: dict[str, Any], source: dict[str, str], persistent: bool
) -> Basic.Properties:
    """The publish's properties: ``headers`` as the table, with go-micro's headers mirrored."""
    content_type = source.get(CONTENT_TYPE)
    message_id = source.get(ID)
    if content_type is None or message_id is None:
        for name, value in source.items():
            folded = name.casefold()
            if content_type is None and folded == "content-type":
                content_type = value
            elif message_id is None and folded == "micro-id":
                message_id = value
    return Properties(
        headers=headers or None,
        delivery_mode=2 if persistent else 1,
        content_type=content_type if content_type and len(content_type) <= SHORTSTR else None,
        # Without one aiormq makes up an id: Micro-ID is the message's own.
        message_id=message_id if message_id and len(message_id) <= SHORTSTR else None,
    )


class Publisher:
    """Publishes on the broker's connection: one confirm-mode channel per connection."""

    def __init__(self, link: Link, options: RabbitMQOptions) -> None:
        self._link = link
        self._options = options
        self._channel: aiormq.abc.AbstractChannel | None = None
        self._channel_of: aiormq.abc.AbstractConnection | None = None
        self._topology: aiormq.abc.AbstractChannel | None = None
        self._topology_of: aiormq.abc.AbstractConnection | None = None
        self._opening: asyncio.Lock = asyncio.Lock()
        self.delays = DelayQueues(options)
        #: Publishes started and not finished (confirmed, or failed).
        self.in_flight = 0
        self._drained: asyncio.Event = asyncio.Event()
        self._drained.set()

    def send(self, topic: str, message: Message) -> Coroutine[Any, Any, None]:
        """Publish ``message`` to the topic exchange with ``topic`` as routing key.

        Not a coroutine itself: it returns the publish's, one frame less to resume
        at each of the publish's waits.
        """
        headers = message.headers
        table, prefix = encode_headers(headers, self._link.frame_max)
        body = message.body
        if prefix is not None:
            body = prefix + bytes(body)
        elif type(body) is not bytes:
            body = bytes(body)
        properties = properties_for(table, headers, self._options.persistent)
        return self.publish(self._options.exchange, topic, body, properties)

    async def redeliver(
        self, queue: str, body: bytes, properties: Basic.Properties, delay: float
    ) -> None:
        """Publish a copy of a delivery back to ``queue``, after ``delay`` seconds."""
        ms = round(delay * 1000)
        if ms <= 0:
            await self.publish("", queue, body, properties)
            return
        headers = dict(properties.headers or {})
        headers[DELAY] = str(ms)
        properties.headers = headers
        channel = await self._topology_channel()
        await self.delays.ensure(channel, ms)
        await self.publish(delay_exchange(self._options), queue, body, properties)

    async def publish(
        self, exchange: str, routing_key: str, body: bytes, properties: Basic.Properties
    ) -> None:
        """One publish, confirmed, made again on a new connection if the old one went away."""
        timeout = self._options.publish_timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self.in_flight += 1
        self._drained.clear()
        try:
            attempt = 0
            while True:
                attempt += 1
                channel = await self._publish_channel(deadline - loop.time())
                try:
                    confirmation = await channel.basic_publish(
                        body,
                        exchange=exchange,
                        routing_key=routing_key,
                        properties=properties,
                        timeout=max(0.001, deadline - loop.time()),
                    )
                except TimeoutError:
                    raise PublishError(
                        f"rabbitmq did not confirm the publish to {routing_key!r} within "
                        f"{timeout}s (publish_timeout)"
                    ) from None
                except asyncio.CancelledError as exc:
                    task = asyncio.current_task()
                    if (task is not None and task.cancelling()) or self._link.closed:
                        raise  # this publish was cancelled, or the broker closed
                    # aiormq cancels what is in flight on a connection it gave up (a missed
                    # heartbeat): the publish was not confirmed, so it is made again.
                    if loop.time() >= deadline:
                        raise PublishError(
                            f"rabbitmq publish to {routing_key!r} failed: the connection was lost "
                            f"and not restored within {timeout}s"
                        ) from exc
                    await asyncio.sleep(min(backoff(attempt, 0.02, 2.0, 1.0), timeout / 10))
                    continue
                except _LOST as exc:
                    if self._link.closed:
                        raise NotConnected("rabbitmq broker was disconnected") from exc
                    if loop.time() >= deadline:
                        raise PublishError(
                            f"rabbitmq publish to {routing_key!r} failed: the connection was lost "
                            f"and not restored within {timeout}s ({exc})"
                        ) from exc
                    # Not confirmed: publish again once the connection is back (at least once).
                    await asyncio.sleep(min(backoff(attempt, 0.02, 2.0, 1.0), timeout / 10))
                    continue
                except aiormq.exceptions.AMQPError as exc:
                    raise PublishError(
                        f"rabbitmq publish to {routing_key!r} failed: {exc}"
                    ) from exc
                if confirmation is not None and not isinstance(confirmation, Basic.Ack):
                    raise PublishError(
                        f"rabbitmq refused the publish to {routing_key!r} "
                        f"({type(confirmation).__name__})"
                    )
                return
        finally:
            self.in_flight -= 1
            if not self.in_flight:
                self._drained.set()

    async def _publish_channel(self, timeout: float) -> aiormq.abc.AbstractChannel:
        channel = self._channel
        connection = self._link.connection
        if channel is not None and connection is self._channel_of and not channel.is_closed:
            return channel
        return await self._open("publish", timeout)

    async def _topology_channel(self) -> aiormq.abc.AbstractChannel:
        channel = self._topology
        connection = self._link.connection
        if channel is not None and connection is self._topology_of and not channel.is_closed:
            return channel
        return await self._open("topology", self._options.publish_timeout)

    async def _open(self, which: str, timeout: float) -> aiormq.abc.AbstractChannel:
        if timeout <= 0:
            raise PublishError("rabbitmq broker could not publish within publish_timeout")
        async with self._opening:
            connection = await self._link.ready(timeout)
            current = self._channel if which == "publish" else self._topology
            owner = self._channel_of if which == "publish" else self._topology_of
            if current is not None and owner is connection and not current.is_closed:
                return current
            if owner is not connection:
                self.delays.forget()
            try:
                channel = await connection.channel(
                    publisher_confirms=self._options.confirm and which == "publish"
                )
            except _LOST as exc:
                self._link.lost(connection)
                raise NotConnected(f"rabbitmq broker cannot open a channel: {exc}") from exc
            if which == "publish":
                self._channel, self._channel_of = channel, connection
            else:
                self._topology, self._topology_of = channel, connection
            return channel

    async def drain(self, timeout: float) -> int:
        """Wait up to ``timeout`` seconds for the publishes in flight; how many are left."""
        if self.in_flight:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._drained.wait()
        return self.in_flight
