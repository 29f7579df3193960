"""Deliberately broken brokers. The conformance suite must fail every one of them.

Each is the memory broker with one defect that a real plugin could have, and
each declares the capability it breaks (as a buggy plugin would).
"""

from __future__ import annotations

from typing import Any

from microbroker import Delivery, Handler, Message, PublishError, Subscriber
from microbroker.brokers.memory import MemoryBroker
from microbroker.transport import header_size


class DroppingBroker(MemoryBroker):
    """Drops one message in fifty while declaring at-least-once delivery."""

    def __init__(self, address: str | None = None, **options: Any) -> None:
        super().__init__(address, **options)
        self._published = 0

    async def send(self, topic: str, message: Message, **options: Any) -> None:
        self._published += 1
        if self._published % 50 == 0:
            return
        await super().send(topic, message, **options)


class GroupIgnoringBroker(MemoryBroker):
    """Ignores queue groups: every member gets every message."""

    async def receive(
        self,
        topic: str,
        deliver: Handler,
        *,
        queue: str | None,
        auto_ack: bool,
        **options: Any,
    ) -> Subscriber:
        return await super().receive(topic, deliver, queue=None, auto_ack=auto_ack, **options)


class HeaderLosingBroker(MemoryBroker):
    """Loses every header on the way."""

    async def send(self, topic: str, message: Message, **options: Any) -> None:
        await super().send(topic, Message(message.body, {}), **options)


class FakeRedeliveryBroker(MemoryBroker):
    """Declares acknowledgement but never redelivers: nack and handler errors are swallowed."""

    async def receive(
        self,
        topic: str,
        deliver: Handler,
        *,
        queue: str | None,
        auto_ack: bool,
        **options: Any,
    ) -> Subscriber:
        async def swallow(delivery: Delivery) -> None:
            # The handler settles a stand-in; the real delivery is always acked.
            stand_in = Delivery(
                delivery.topic, delivery.message, queue=delivery.queue, attempt=delivery.attempt
            )
            await deliver(stand_in)
            await delivery.ack()

        return await super().receive(topic, swallow, queue=queue, auto_ack=auto_ack, **options)


class EndlessRedeliveryBroker(MemoryBroker):
    """Gives a rejected message back instead of forgetting it: a poison message loops for ever."""

    async def receive(
        self,
        topic: str,
        deliver: Handler,
        *,
        queue: str | None,
        auto_ack: bool,
        **options: Any,
    ) -> Subscriber:
        async def rejecting_is_nacking(delivery: Delivery) -> None:
            await deliver(_RejectNacks(delivery))

        return await super().receive(
            topic, rejecting_is_nacking, queue=queue, auto_ack=auto_ack, **options
        )


class _RejectNacks(Delivery):
    """A transport's delivery whose on_reject asks for redelivery (the bug)."""

    __slots__ = ("_inner",)

    def __init__(self, inner: Delivery) -> None:
        super().__init__(inner.topic, inner.message, queue=inner.queue, attempt=inner.attempt)
        self._inner = inner

    async def on_ack(self) -> None:
        await self._inner.ack()

    async def on_nack(self, delay: float) -> None:
        await self._inner.nack(delay=delay)

    async def on_reject(self) -> None:
        await self._inner.nack(delay=0.01)


class FramingOverflowBroker(MemoryBroker):
    """Declares 1 MiB but its framing does not fit: messages near the limit fail to send."""

    def __init__(self, address: str | None = None, **options: Any) -> None:
        super().__init__(address, max_message_size=1024 * 1024, **options)

    async def send(self, topic: str, message: Message, **options: Any) -> None:
        # The wire adds a 512-byte frame the declaration forgot (NATS's header block, say).
        if len(message.body) + header_size(message.headers) + 512 > 1024 * 1024:
            raise PublishError(f"the message on {topic!r} is larger than the server's limit")
        await super().send(topic, message, **options)


class HeaderCappingBroker(MemoryBroker):
    """Declares the default 256 headers, but its wire keeps only the first 100 of a message."""

    async def send(self, topic: str, message: Message, **options: Any) -> None:
        kept = dict(list(message.headers.items())[:100])
        await super().send(topic, Message(message.body, kept), **options)


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
    EndlessRedeliveryBroker: ["test_a_poison_message_is_given_up_by_default"],
    FramingOverflowBroker: ["test_round_trip_headers_and_binary_bodies"],
    HeaderCappingBroker: ["test_header_limits_are_enforced_clearly"],
}
