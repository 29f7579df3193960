"""RabbitMQ: raw aiormq, microbroker's RabbitMQBroker, FastStream's RabbitBroker.

The same topology and guarantees for all three, the microbroker defaults: a
durable topic exchange, persistent messages, publisher confirms (each publish
awaits its confirm), a durable queue per queue group and an exclusive one per
broadcast subscriber, manual acks after the handler, prefetch 256. The server
is :class:`tests.support.rabbitmq_server.RabbitMQServer`, as in the tests.
"""

from __future__ import annotations

import uuid
from contextlib import AbstractContextManager
from typing import Any

import aiormq
import aiormq.abc
from pamqp.commands import Basic

from microbroker_rabbitmq import RabbitMQBroker

from . import Hit, Publish, Transport, Variant
from .common import FastStreamVariant, MicrobrokerVariant

EXCHANGE = "bench"
PREFETCH = 256


class RawAiormq(Variant):
    """``channel.basic_publish`` (confirmed) and a consumer that acks, on two connections."""

    kind = "raw"

    def __init__(self, url: str) -> None:
        self.url = url

    async def open(self) -> None:
        self.pub = await aiormq.connect(self.url)
        self.sub = await aiormq.connect(self.url)
        self.channel = await self.pub.channel(publisher_confirms=True)
        await self.channel.exchange_declare(EXCHANGE, exchange_type="topic", durable=True)

    async def subscribe(self, topic: str, queue: str | None, hit: Hit) -> None:
        channel = await self.sub.channel(publisher_confirms=False)
        await channel.basic_qos(prefetch_count=PREFETCH)
        if queue:
            name = f"{topic}:{queue}"
            await channel.queue_declare(name, durable=True)
        else:
            declared = await channel.queue_declare("", exclusive=True, auto_delete=True)
            assert declared.queue is not None
            name = declared.queue
        await channel.queue_bind(name, EXCHANGE, routing_key=topic)
        ack = channel.basic_ack

        async def on_message(message: aiormq.abc.DeliveredMessage) -> None:
            hit()
            await ack(message.delivery.delivery_tag, wait=False)  # type: ignore[union-attr]

        await channel.basic_consume(name, on_message)

    def publisher(self, topic: str, body: bytes) -> Publish:
        publish = self.channel.basic_publish

        async def send() -> None:
            properties = Basic.Properties(
                delivery_mode=2, message_id=uuid.uuid4().hex, content_type="application/protobuf"
            )
            await publish(body, exchange=EXCHANGE, routing_key=topic, properties=properties)

        return send

    async def close(self) -> None:
        await self.pub.close()
        await self.sub.close()


def _server() -> AbstractContextManager[Any]:
    from support.rabbitmq_server import RabbitMQServer

    return RabbitMQServer(name="bench")


def _faststream(url: str) -> FastStreamVariant:
    from faststream.rabbit import ExchangeType, RabbitBroker, RabbitExchange, RabbitQueue
    from faststream.rabbit.schemas import Channel

    exchange = RabbitExchange(EXCHANGE, type=ExchangeType.TOPIC, durable=True)

    def make() -> Any:
        return RabbitBroker(url, logger=None, default_channel=Channel(prefetch_count=PREFETCH))

    def sub_options(topic: str, queue: str | None) -> dict[str, Any]:
        if queue:
            q = RabbitQueue(f"{topic}:{queue}", durable=True, routing_key=topic)
        else:
            q = RabbitQueue(
                f"bench-fs-{uuid.uuid4().hex[:12]}",
                exclusive=True,
                auto_delete=True,
                routing_key=topic,
            )
        return {"queue": q, "exchange": exchange}

    class FastStreamRabbit(FastStreamVariant):
        async def subscribe(self, topic: str, queue: str | None, hit: Hit) -> None:
            from google.protobuf.wrappers_pb2 import BytesValue

            async def on_message(body: bytes) -> None:
                BytesValue.FromString(body)
                hit()

            self.subs[-1].subscriber(**sub_options(topic, queue))(on_message)

        def publisher(self, topic: str, body: bytes) -> Publish:
            publish = self.pub.publish

            async def send() -> None:
                await publish(body, exchange=exchange, routing_key=topic, persist=True)

            return send

    return FastStreamRabbit(make)


def transport() -> Transport:
    def address(server: Any) -> str:
        return str(server.url)

    def micro(server: Any) -> Variant:
        url = address(server)
        return MicrobrokerVariant(lambda: RabbitMQBroker(url, exchange=EXCHANGE, prefetch=PREFETCH))

    return Transport(
        "rabbitmq",
        {
            "raw": lambda server: RawAiormq(address(server)),
            "microbroker": micro,
            "faststream": lambda server: _faststream(address(server)),
        },
        _server,
        notes=[
            "rabbitmq: every variant persistent, confirmed one publish at a time, acked after "
            "the handler, prefetch 256; durable group queues, exclusive broadcast queues"
        ],
    )
