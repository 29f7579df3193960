"""Deliberately broken brokers. The conformance suite must fail every one of them.

Each is the memory broker with one defect that a real plugin could have, and
each declares the capability it breaks (as a buggy plugin would).
"""

from __future__ import annotations

import contextlib
from typing import Any

from microbroker import Delivery, Handler, Message, Subscriber
from microbroker.brokers.memory import MemoryBroker


class DroppingBroker(MemoryBroker):
    """Drops one message in fifty while declaring at-least-once delivery."""

    def __init__(self, address: str | None = None, **options: Any) -> None:
        super().__init__(address, **options)
        self._published = 0

    async def publish(self, topic: str, message: Message, **options: Any) -> None:
        self._check_publish(topic, message)
        self._published += 1
        if self._published % 50 == 0:
            return
        await super().publish(topic, message, **options)


class GroupIgnoringBroker(MemoryBroker):
    """Ignores queue groups: every member gets every message."""

    async def subscribe(
        self,
        topic: str,
        handler: Handler,
        *,
        queue: str | None = None,
        auto_ack: bool = True,
        **options: Any,
    ) -> Subscriber:
        return await super().subscribe(topic, handler, auto_ack=auto_ack, **options)


class HeaderLosingBroker(MemoryBroker):
    """Loses every header on the way."""

    async def publish(self, topic: str, message: Message, **options: Any) -> None:
        await super().publish(topic, Message(message.body, {}), **options)


class FakeRedeliveryBroker(MemoryBroker):
    """Declares acknowledgement but never redelivers: nack and handler errors are swallowed."""

    async def subscribe(
        self,
        topic: str,
        handler: Handler,
        *,
        queue: str | None = None,
        auto_ack: bool = True,
        **options: Any,
    ) -> Subscriber:
        async def swallow(delivery: Delivery) -> None:
            # The handler settles a stand-in; the real delivery is always acked.
            stand_in = Delivery(
                delivery.topic, delivery.message, queue=delivery.queue, attempt=delivery.attempt
            )
            with contextlib.suppress(Exception):
                await handler(stand_in)
            await delivery.ack()

        return await super().subscribe(topic, swallow, queue=queue, auto_ack=auto_ack, **options)


FAULTY = {
    DroppingBroker: ["test_no_message_lost"],
    GroupIgnoringBroker: ["test_queue_group_delivers_each_message_to_one_member"],
    HeaderLosingBroker: [
        "test_round_trip_headers_and_binary_bodies",
        "test_typed_events_protobuf_and_json",
    ],
    FakeRedeliveryBroker: [
        "test_nack_leads_to_redelivery",
        "test_handler_exception_leads_to_redelivery",
    ],
}
