"""Variants shared by several transports: microbroker's typed Event API, and FastStream."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from google.protobuf.wrappers_pb2 import BytesValue

import microbroker

from . import Hit, Publish, Variant


class MicrobrokerVariant(Variant):
    """``service.event(topic).publish(proto)`` to a typed ``@service.subscriber``."""

    kind = "microbroker"

    def __init__(self, make_broker: Callable[[], microbroker.Broker], separator: str = ".") -> None:
        self.make_broker = make_broker
        self.separator = separator

    async def open(self) -> None:
        tag = uuid.uuid4().hex[:8]
        self.publisher_service = microbroker.Service(f"bench-pub-{tag}", broker=self.make_broker())
        self.subscriber_service = microbroker.Service(f"bench-sub-{tag}", broker=self.make_broker())
        await self.publisher_service.start()

    async def subscribe(self, topic: str, queue: str | None, hit: Hit) -> None:
        async def on_event(msg: BytesValue, ctx: microbroker.Context) -> None:
            hit()

        self.subscriber_service.subscriber(topic, queue=queue)(on_event)

    async def ready(self) -> None:
        await self.subscriber_service.start()
        flush = getattr(getattr(self.subscriber_service.broker, "client", None), "flush", None)
        if flush is not None:
            await flush()

    def publisher(self, topic: str, body: bytes) -> Publish:
        value = BytesValue.FromString(body)
        publish = self.publisher_service.event(topic).publish

        async def send() -> None:
            await publish(value)

        return send

    async def close(self) -> None:
        await self.subscriber_service.stop()
        await self.publisher_service.stop()


class FastStreamVariant(Variant):
    """A FastStream broker: ``broker.publish(bytes, subject)`` to ``@broker.subscriber``.

    The handler takes ``bytes`` and decodes the protobuf itself, as a user of
    FastStream would.
    """

    kind = "faststream"

    def __init__(
        self,
        make_broker: Callable[[], Any],
        separator: str = ".",
        subscriber_options: Callable[[str, str | None], dict[str, Any]] | None = None,
        publish_options: Callable[[str], dict[str, Any]] | None = None,
        broker_per_subscriber: bool = False,
    ) -> None:
        self.make_broker = make_broker
        #: FastStream's MQTT broker takes one subscriber per topic filter and connection.
        self.broker_per_subscriber = broker_per_subscriber
        self.separator = separator
        self.subscriber_options = subscriber_options or (
            lambda topic, queue: {"queue": queue} if queue else {}
        )
        self.publish_options = publish_options or (lambda topic: {})

    async def open(self) -> None:
        self.pub = self.make_broker()
        self.subs = [self.make_broker()]
        self.filters: set[tuple[str, str | None]] = set()
        await self.pub.start()

    async def subscribe(self, topic: str, queue: str | None, hit: Hit) -> None:
        async def on_message(body: bytes) -> None:
            BytesValue.FromString(body)
            hit()

        if self.broker_per_subscriber and (topic, queue) in self.filters:
            self.subs.append(self.make_broker())
        self.filters.add((topic, queue))
        self.subs[-1].subscriber(topic, **self.subscriber_options(topic, queue))(on_message)

    async def ready(self) -> None:
        for sub in self.subs:
            await sub.start()

    def publisher(self, topic: str, body: bytes) -> Publish:
        publish = self.pub.publish
        options = self.publish_options(topic)

        async def send() -> None:
            await publish(body, topic, **options)

        return send

    async def close(self) -> None:
        for sub in self.subs:
            await sub.stop()
        await self.pub.stop()
