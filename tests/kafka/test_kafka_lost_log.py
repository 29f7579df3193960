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


async def test_a_group_caught_up_on_a_batched_log_rejoins_without_reading_it_again(
    kafka_server: KafkaServer, kafka_client: str
) -> None:
    """tansu answers ListOffsets with the base offset of the last batch + 1, short of the
    log's end: a group committed at the end of a log whose last batch holds many records
    looks "beyond the end" by it. The end is read from the fetch instead, so a rejoining
    group goes on from its committed offset and reads nothing twice."""
    topic, group = f"lost.{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    received: list[bytes] = []

    async def handler(delivery: Delivery) -> None:
        received.append(delivery.message.body)

    async with (
        KafkaBroker(kafka_server.address, client=kafka_client, **FAST) as pub,
        KafkaBroker(kafka_server.address, client=kafka_client, **FAST) as sub,
    ):
        # Published at once, the 100 go to the server in one batch.
        await asyncio.gather(*(pub.publish(topic, Message(b"%d" % n)) for n in range(100)))
        first = await sub.subscribe(topic, handler, queue=group)
        await eventually(lambda: len(received) == 100, 30, "the first 100")
        await first.unsubscribe()  # commits its offsets, 100 on partition 0
        tp = TopicPartition(topic, 0)
        listed = AIOKafkaConsumer(bootstrap_servers=kafka_server.address, group_id=group)
        await listed.start()
        try:
            assert await listed.committed(tp) == 100
            short = (await listed.end_offsets([tp]))[tp]
        finally:
            await listed.stop()
        await sub.subscribe(topic, handler, queue=group)
        await pub.publish(topic, Message(b"after"))
        await eventually(lambda: b"after" in received, 30, "the message published after")
        await asyncio.sleep(0.5)  # nothing more arrives
    print(f"\nListOffsets said the log ends at {short}; it ends at 100")
    assert received == [b"%d" % n for n in range(100)] + [b"after"]
