"""A subscriber whose position lies beyond the end of the server's log goes on per ``offset_reset``.

Kafka answers a fetch past the end of a partition with OFFSET_OUT_OF_RANGE,
and the consumer goes on from ``offset_reset``. tansu answers with no records,
so without a check of its own a subscriber would wait, silently, until the
log grew past its old position, and skip everything before. That happens when
a server without durable storage restarts empty (its records and committed
offsets gone), or when a group's committed offset lands on the new server
before the group rejoins (aiokafka retries a commit across the rejoin).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from kafka_helpers import FAST, eventually
from support.kafka_server import KafkaServer

from microbroker import Delivery, Message, MicrobrokerError
from microbroker_kafka import KafkaBroker


async def commit_offset(address: str, group: str, topic: str, offset: int) -> None:
    """Commit ``offset`` on partition 0 of ``topic`` for ``group``, as a member-less consumer."""
    consumer = AIOKafkaConsumer(bootstrap_servers=address, group_id=group)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.commit({tp: offset})
        assert await consumer.committed(tp) == offset
    finally:
        await consumer.stop()


@pytest.mark.parametrize("offset_reset", ["earliest", "latest"])
async def test_a_group_committed_past_the_end_of_the_log_goes_on_per_offset_reset(
    kafka_server: KafkaServer, offset_reset: str
) -> None:
    topic, group = f"lost.{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    received: list[bytes] = []
    async with (
        KafkaBroker(kafka_server.address, **FAST) as pub,
        KafkaBroker(kafka_server.address, **{**FAST, "offset_reset": offset_reset}) as sub,
    ):
        for n in range(10):
            await pub.publish(topic, Message(b"before-%d" % n))
        await commit_offset(kafka_server.address, group, topic, 1000)

        async def handler(delivery: Delivery) -> None:
            received.append(delivery.message.body)

        await sub.subscribe(topic, handler, queue=group)
        for n in range(5):
            await pub.publish(topic, Message(b"after-%d" % n))
        expected = [b"after-%d" % n for n in range(5)]
        if offset_reset == "earliest":
            expected = [b"before-%d" % n for n in range(10)] + expected
        await eventually(lambda: len(received) >= len(expected), 30, "delivery")
        await asyncio.sleep(0.5)  # nothing more arrives
    assert received == expected
    # The group's committed offset was replaced: it no longer points past the end.
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_server.address, group_id=group)
    await consumer.start()
    try:
        assert await consumer.committed(TopicPartition(topic, 0)) == 15
    finally:
        await consumer.stop()


async def test_a_subscriber_whose_server_lost_its_log_goes_on_from_its_beginning(
    new_kafka_server: Callable[..., KafkaServer],
) -> None:
    """A subscriber without a queue (no group, no rejoin) across an in-memory server's restart."""
    server = new_kafka_server(name="tansu-amnesia")
    topic = f"lost.{uuid.uuid4().hex[:8]}"
    received: list[bytes] = []
    async with (
        KafkaBroker(server.address, request_timeout=5.0, **FAST) as pub,
        KafkaBroker(server.address, request_timeout=5.0, **FAST) as sub,
    ):

        async def handler(delivery: Delivery) -> None:
            received.append(delivery.message.body)

        await sub.subscribe(topic, handler)
        for n in range(50):
            await pub.publish(topic, Message(b"before-%d" % n))
        await eventually(lambda: len(received) == 50, 30, "delivery before the restart")
        await asyncio.to_thread(server.restart, hard=True)  # comes back empty
        after = [b"after-%d" % n for n in range(10)]
        for body in after:
            while True:
                try:
                    await pub.publish(topic, Message(body))
                    break
                except MicrobrokerError:
                    await asyncio.sleep(0.1)
        await eventually(lambda: set(after) <= set(received), 60, "delivery after the restart")
    assert received[50:] == after
