"""Subscribing: a queue bound to the exchange, a consumer on its own channel, and a mailbox.

Each subscription has a channel of its own with ``basic.qos(prefetch)``: the
server sends it at most ``prefetch`` messages it has not acknowledged, which
is the backpressure (a slow handler leaves the rest on the server, where the
other members of a group can take them). Deliveries go through a
:class:`~microbroker.transport.Mailbox` (``Overflow.BLOCK``, never fuller than
the prefetch) to the handler, one at a time, in order.

After a reconnect the subscription declares its queue and binding again and
consumes again. Deliveries of a queue group received on the lost connection
and not handled yet are skipped: the server has put them back in the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Literal, cast

import aiormq
import aiormq.abc
from pamqp.commands import Basic

from microbroker.transport import Handler, Mailbox, Overflow, Subscriber, report_error

from ._connection import Link
from ._delivery import RabbitMQDelivery, attempt_of
from ._publishing import Publisher
from ._topology import TOPIC, declare_broadcast_queue, declare_group_queue
from .options import RabbitMQOptions

logger = logging.getLogger("microbroker.broker.rabbitmq")

Settle = Literal["ack", "reject", "requeue"]

_CLOSED = (
    aiormq.exceptions.AMQPError,
    aiormq.exceptions.ChannelInvalidStateError,
    ConnectionError,
    RuntimeError,
)


class RabbitMQSubscriber(Subscriber):
    """A subscription: its queue, its consumer, its mailbox."""

    def __init__(
        self,
        topic: str,
        deliver: Handler,
        *,
        queue: str | None,
        auto_ack: bool,
        link: Link,
        publisher: Publisher,
        options: RabbitMQOptions,
        group_queue: str | None,
        on_unsubscribe: Callable[[RabbitMQSubscriber], None] | None = None,
    ) -> None:
        super().__init__(topic, queue, auto_ack)
        self._on_unsubscribe = on_unsubscribe
        self._deliver = deliver
        self._link = link
        self._publisher = publisher
        self._options = options
        #: The queue consumed from: the group's (named), or the server's (broadcast).
        self.queue_name = group_queue or ""
        self._group = group_queue is not None
        self._channel: aiormq.abc.AbstractChannel | None = None
        self._tag: str | None = None
        self._active = False
        self._stop_listening = link.on_reconnect(self._resume)
        self._mailbox: Mailbox[RabbitMQDelivery] = Mailbox(
            self._handle,
            capacity=options.prefetch,
            overflow=Overflow.BLOCK,
            name=f"rabbitmq subscription to {topic!r}",
        )

    @property
    def active(self) -> bool:
        return self._active

    async def start(self, connection: aiormq.abc.AbstractConnection) -> None:
        """Declare the queue and its binding, and consume: every later publish reaches it."""
        channel = await connection.channel(publisher_confirms=False)
        try:
            await channel.basic_qos(prefetch_count=self._options.prefetch)
            if self._group:
                await declare_group_queue(channel, self._options, self.queue_name)
            else:
                self.queue_name = await declare_broadcast_queue(channel)
            await channel.queue_bind(
                self.queue_name, self._options.exchange, routing_key=self.topic
            )
            consumed = await channel.basic_consume(self.queue_name, self._on_message)
        except BaseException:
            with contextlib.suppress(Exception):
                await channel.close()
            raise
        self._channel = channel
        self._tag = consumed.consumer_tag
        self._active = True

    async def _resume(self, connection: aiormq.abc.AbstractConnection) -> None:
        if not self._active:
            return
        try:
            await self.start(connection)
        except _CLOSED as exc:
            if connection.is_closed:
                return  # lost again: the next reconnect tries again
            report_error(exc, None)
            self._link.lost(connection)  # try it all again on a new connection

    async def _on_message(self, raw: aiormq.abc.DeliveredMessage) -> None:
        # aiormq runs this in a task of its own per message, in arrival order; the mailbox
        # hands them to the handler one at a time.
        headers = raw.header.properties.headers
        topic = self.topic
        if headers and TOPIC in headers:
            topic = str(headers[TOPIC])
        else:
            key = cast(Basic.Deliver, raw.delivery).routing_key
            if key:
                topic = key
        delivery = RabbitMQDelivery(topic, raw, self, attempt_of(raw, headers))
        if not self._mailbox.offer(delivery):
            # Closing: the channel closes next and the server takes the message back.
            return

    def _handle(self, delivery: RabbitMQDelivery) -> Awaitable[None]:
        if self._group and delivery.raw.channel.is_closed:
            # Received on a lost connection: the server put it back in the group's queue.
            return asyncio.sleep(0)
        return self._deliver(delivery)

    # Settlement (for RabbitMQDelivery) ------------------------------------------------

    async def settle(self, raw: aiormq.abc.DeliveredMessage, how: Settle) -> None:
        channel = raw.channel
        tag = cast(Basic.Deliver, raw.delivery).delivery_tag
        if channel.is_closed or tag is None:
            return  # the server has taken it back with its channel: it will be redelivered
        try:
            if how == "ack":
                await channel.basic_ack(tag, wait=False)
            elif how == "reject":
                await channel.basic_reject(tag, requeue=False, wait=False)
            else:
                await channel.basic_nack(tag, requeue=True, wait=False)
        except _CLOSED:
            return

    async def redeliver(self, body: bytes, properties: Basic.Properties, delay: float) -> None:
        """Publish a copy of a delivery back to this subscription's queue after ``delay``."""
        if not self._group and self._channel is not None and self._channel.is_closed:
            raise aiormq.exceptions.ChannelInvalidStateError(
                "the broadcast queue went away with its connection"
            )
        await self._publisher.redeliver(self.queue_name, body, properties, delay)

    # Ending ---------------------------------------------------------------------------

    async def stop_consuming(self) -> None:
        """Ask the server for no more messages (the first step of closing)."""
        channel, tag = self._channel, self._tag
        if channel is None or tag is None or channel.is_closed:
            return
        with contextlib.suppress(*_CLOSED, TimeoutError):
            async with asyncio.timeout(self._options.publish_timeout):
                await channel.basic_cancel(tag)

    async def unsubscribe(self) -> None:
        if not self._active:
            return
        self._active = False
        self._stop_listening()
        if self._on_unsubscribe is not None:
            self._on_unsubscribe(self)
        await self.stop_consuming()
        # Let the running handler finish; what was not handled goes back to the queue (and
        # to another member of the group) when the channel closes, unacknowledged.
        await self._mailbox.close()
        channel = self._channel
        self._channel = None
        if channel is None or channel.is_closed:
            return
        worker = self._mailbox.task
        if worker is asyncio.current_task():
            # Unsubscribed from its own handler: close once it returned (and acked).
            closing = asyncio.get_running_loop().create_task(self._close_after(worker, channel))
            closing.add_done_callback(_quiet)
            return
        await self._close_channel(channel)

    async def _close_after(
        self, worker: asyncio.Task[None], channel: aiormq.abc.AbstractChannel
    ) -> None:
        with contextlib.suppress(BaseException):
            await worker
        await self._close_channel(channel)

    async def _close_channel(self, channel: aiormq.abc.AbstractChannel) -> None:
        if channel.is_closed:
            return
        with contextlib.suppress(*_CLOSED, TimeoutError):
            async with asyncio.timeout(self._options.publish_timeout):
                await channel.close()


def _quiet(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()
