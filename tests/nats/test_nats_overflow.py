"""The overflow rule of a subscription's mailbox (option max_pending), on a real server.

Core NATS delivers at most once: what a full mailbox refuses is dropped, and
reported to on_error as SlowConsumer with the counts (at once, then at most once
a second). JetStream hands it back to the server, which delivers it again.
"""

from __future__ import annotations

import asyncio
import uuid

from nats_helpers import eventually, eventually_async
from support.nats_server import NatsServer

import microbroker
from microbroker.conformance import ErrorCatcher
from microbroker_nats import NatsBroker, SlowConsumer


async def test_core_nats_reports_every_refused_message_with_counts(
    nats_server: NatsServer,
) -> None:
    topic = f"overflow.{uuid.uuid4().hex[:8]}"
    capacity, total = 10, 300
    release = asyncio.Event()
    entered: list[bytes] = []
    handled: list[bytes] = []

    async def stuck(delivery: microbroker.Delivery) -> None:
        entered.append(delivery.message.body)
        await release.wait()
        handled.append(delivery.message.body)

    with ErrorCatcher() as errors:
        async with (
            NatsBroker(nats_server.url, max_pending=capacity) as sub,
            NatsBroker(nats_server.url) as pub,
        ):
            try:
                subscription = await sub.subscribe(topic, stuck)
                refused = lambda: getattr(subscription, "refused", -1)  # noqa: E731
                pending = lambda: getattr(subscription, "pending", -1)  # noqa: E731
                for n in range(total):
                    await pub.publish(topic, microbroker.Message(str(n).encode()))
                # Each message is in the handler, waiting in the full mailbox, or refused.
                await eventually(
                    lambda: len(entered) + pending() + refused() == total, "every message"
                )
                dropped = refused()
                assert total - capacity - 1 <= dropped <= total - capacity

                def reported() -> int:
                    return sum(e.refused for e, _ in errors.of(SlowConsumer))

                await eventually(lambda: reported() == dropped, f"{dropped} refusals reported")
                reports = [e for e, _ in errors.of(SlowConsumer)]
                assert len(reports) < dropped, "reports are rate-limited, not one per message"
                assert reports[-1].total == dropped
                assert all(not e.redelivered and e.capacity == capacity for e in reports)
                assert all(e.topic == topic and "dropped" in str(e) for e in reports)
            finally:
                release.set()
            kept = total - dropped
            await eventually(lambda: len(handled) == kept, "what the mailbox took")
            numbers = [int(body) for body in handled]
            # In order, none twice. Which ones were refused depends on when the handler took
            # the first one off the full mailbox (message 10 refused, 11 taken, say).
            assert numbers == sorted(set(numbers)), "what the mailbox took, in order"
            assert numbers[: capacity - 1] == list(range(capacity - 1)), "the first ones first"
            # The subscription goes on.
            await pub.publish(topic, microbroker.Message(b"later"))
            await eventually(lambda: handled[-1:] == [b"later"], "a message after the overflow")


async def test_jetstream_hands_refused_messages_back_and_loses_none(
    jetstream_server: NatsServer,
) -> None:
    """A stuck handler and a short ack_wait: the server redelivers what is pending, the
    redeliveries overflow the mailbox (capacity max_ack_pending) and are handed back with
    -NAK; once the handler moves, every message is handled and acked, none given up."""
    topic = f"jsoverflow.{uuid.uuid4().hex[:8]}"
    release = asyncio.Event()
    handled: list[bytes] = []
    options = {"jetstream": True, "max_pending": 1, "max_ack_pending": 5, "ack_wait": 1}

    async def stuck(delivery: microbroker.Delivery) -> None:
        await release.wait()
        handled.append(delivery.message.body)

    with ErrorCatcher() as errors:
        async with (
            NatsBroker(jetstream_server.url, **options) as sub,
            NatsBroker(jetstream_server.url, jetstream=True) as pub,
        ):
            subscription = await sub.subscribe(topic, stuck)
            consumer = getattr(subscription, "consumer", None)
            try:
                for n in range(5):
                    await pub.publish(topic, microbroker.Message(str(n).encode()))
                await errors.wait_for(SlowConsumer, 30)
                report = errors.of(SlowConsumer)[0][0]
                assert report.redelivered
                assert "handed back" in str(report)
            finally:
                release.set()
            expected = {str(n).encode() for n in range(5)}
            await eventually(lambda: set(handled) == expected, "every message handled", 60)
            jsm = sub.client.jetstream()

            async def all_acked() -> bool:
                info = await jsm.consumer_info("MICROBROKER", consumer)
                return info.num_ack_pending == 0 and info.num_pending == 0

            await eventually_async(all_acked, "every message acked", 60)
        assert not errors.of(microbroker.GivenUp), "a refused message is not a failed attempt"
