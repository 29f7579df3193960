"""The RabbitMQ broker: the five members a transport implements, composed from its parts.

- ``_connection``: the connection, reconnected with backoff, the topology declared again;
- ``_topology``: the exchanges, queues and delay queues, and their names;
- ``_publishing``: a message on the wire, publisher confirms, publishes across a reconnect;
- ``_subscribing``: a queue, its consumer, prefetch and a mailbox per subscription;
- ``_delivery``: a delivery, its attempt, and ack / nack with delay / reject.
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import Any

import aiormq.abc

from microbroker.transport import (
    Broker,
    Capabilities,
    Handler,
    InvalidTopic,
    Message,
    NotConnected,
    PublishError,
    Subscriber,
    Wildcards,
    report_error,
)

from ._connection import Link
from ._publishing import Publisher
from ._subscribing import RabbitMQSubscriber
from ._topology import SHORTSTR, declare_exchanges
from .options import DEFAULT_ADDRESS, DEFAULT_MAX_MESSAGE_SIZE, RabbitMQOptions

#: AMQP topic patterns: ``*`` is one word, ``#`` any number of words, zero included.
WILDCARDS = Wildcards(separator=".", one="*", many="#", many_matches_zero=True)


class RabbitMQBroker(Broker):
    """RabbitMQ through a topic exchange, as go-micro's rabbitmq plugin has it.

    ``address`` is ``amqp://user:pass@host:port/vhost`` (``amqps://`` for TLS;
    several, comma-separated, are tried in turn); every other option is a
    field of :class:`~microbroker_rabbitmq.RabbitMQOptions`, also read from
    ``MICRO_RABBITMQ_<OPTION>``.
    """

    name = "rabbitmq"
    default_address = DEFAULT_ADDRESS
    capabilities = Capabilities(
        queue_groups=True,
        ack=True,
        at_least_once=True,
        persistence=True,
        ordering=True,
        reconnect=True,
        wildcards=WILDCARDS,
        max_message_size=DEFAULT_MAX_MESSAGE_SIZE,
    )

    def __init__(self, address: str | None = None, **options: Any) -> None:
        settings = RabbitMQOptions.from_arguments(options)
        super().__init__(address, **{k: v for k, v in options.items() if v is not None})
        self.settings = settings
        self.capabilities = Capabilities(
            queue_groups=True,
            ack=True,
            # Without confirms a publish the connection loses before the server took it is lost.
            at_least_once=settings.confirm,
            persistence=(
                settings.confirm
                and settings.persistent
                and settings.durable_queues
                and settings.exchange_durable
            ),
            ordering=True,
            reconnect=True,
            wildcards=WILDCARDS,
            max_message_size=settings.max_message_size,
        )
        self._endpoints = settings.endpoints(self.address)
        self._link: Link | None = None
        self._publisher: Publisher | None = None
        self._subscribers: list[RabbitMQSubscriber] = []

    @property
    def connected(self) -> bool:
        link = self._link
        return link is not None and not link.closed

    @property
    def reconnects(self) -> int:
        """How often the connection was made again after it was lost."""
        return 0 if self._link is None else self._link.reconnects

    async def connect(self) -> None:
        if self.connected:
            return
        link = Link(self.settings, self._endpoints, self._declare)
        await link.open()
        self._link = link
        self._publisher = Publisher(link, self.settings)

    async def _declare(self, connection: aiormq.abc.AbstractConnection) -> None:
        channel = await connection.channel(publisher_confirms=False)
        try:
            await declare_exchanges(channel, self.settings)
        finally:
            await channel.close()

    async def disconnect(self) -> None:
        link, publisher = self._link, self._publisher
        if link is None or link.closed:
            return
        subscribers, self._subscribers = self._subscribers, []
        # 1. no new messages from the server; 2. the running handlers finish, and what was
        # not handled goes back to the server (unacknowledged, when the channels close).
        for subscriber in subscribers:
            await subscriber.stop_consuming()
        for subscriber in subscribers:
            await subscriber.unsubscribe()
        # 3. the publishes that are in flight get their confirms.
        if publisher is not None:
            left = await publisher.drain(self.settings.drain_timeout)
            if left:
                report_error(
                    PublishError(
                        f"rabbitmq broker closed with {left} publish(es) not confirmed after "
                        f"{self.settings.drain_timeout}s (drain_timeout)"
                    ),
                    None,
                )
        # 4. the connection.
        await link.close()

    async def send(self, topic: str, message: Message, **options: Any) -> None:
        if options:
            raise TypeError(
                f"the rabbitmq broker takes no publish options (got {', '.join(sorted(options))})"
            )
        publisher = self._publisher
        if publisher is None or not self.connected:
            raise NotConnected("rabbitmq broker is not connected")
        if len(topic) > SHORTSTR // 4 and len(topic.encode()) > SHORTSTR:
            raise InvalidTopic(f"a rabbitmq routing key is at most {SHORTSTR} bytes: {topic!r}")
        if "*" in topic or "#" in topic:
            for word in topic.split("."):
                if word in ("*", "#"):
                    raise InvalidTopic(
                        f"cannot publish to {topic!r}: '*' and '#' are wildcards, "
                        "for subscriptions only"
                    )
        await publisher.send(topic, message)

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
                f"the rabbitmq broker takes no subscribe options (got {', '.join(sorted(options))})"
            )
        link, publisher = self._link, self._publisher
        if link is None or publisher is None or not self.connected:
            raise NotConnected("rabbitmq broker is not connected")
        if len(topic.encode()) > SHORTSTR:
            raise InvalidTopic(f"a rabbitmq binding key is at most {SHORTSTR} bytes: {topic!r}")
        group_queue = None
        if queue is not None:
            if not queue:
                raise ValueError("a queue group needs a name")
            group_queue = _queue_name(self.settings.group_queue(topic, queue))
        subscriber = RabbitMQSubscriber(
            topic,
            deliver,
            queue=queue,
            auto_ack=auto_ack,
            link=link,
            publisher=publisher,
            options=self.settings,
            group_queue=group_queue,
            on_unsubscribe=self._forget,
        )
        try:
            connection = await link.ready(self.settings.publish_timeout)
            await subscriber.start(connection)
        except aiormq.exceptions.AMQPError as exc:
            await subscriber.unsubscribe()
            raise _subscribe_error(topic, group_queue, exc) from exc
        except BaseException:
            await subscriber.unsubscribe()
            raise
        self._subscribers.append(subscriber)
        return subscriber

    def _forget(self, subscriber: RabbitMQSubscriber) -> None:
        with contextlib.suppress(ValueError):
            self._subscribers.remove(subscriber)


def _queue_name(name: str) -> str:
    """``name``, or for one longer than AMQP allows, its start and a digest of the whole."""
    if len(name.encode()) <= SHORTSTR:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:32]
    return name.encode()[: SHORTSTR - 33].decode(errors="ignore") + "~" + digest


def _subscribe_error(topic: str, queue: str | None, exc: Exception) -> Exception:
    from microbroker import MicrobrokerError

    what = f"queue {queue!r}" if queue else "a broadcast queue"
    hint = ""
    if isinstance(exc, aiormq.exceptions.ChannelPreconditionFailed):
        hint = (
            ": the queue exists with other settings (durable_queues, queue_type, delivery_limit "
            "must match how it was declared first; delete it or change queue_name)"
        )
    return MicrobrokerError(f"rabbitmq cannot subscribe to {topic!r} with {what}: {exc}{hint}")
