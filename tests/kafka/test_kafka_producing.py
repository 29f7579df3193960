"""The producer path (``microbroker_kafka._producing``): records appended to aiokafka batches.

What it must keep of ``AIOKafkaProducer.send()``: where a keyed record goes,
the order of each publisher's records, nothing lost among publishers that
share a batch, and errors a ``confirm=False`` publisher cannot see are said.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import defaultdict
from collections.abc import Callable

import pytest
from aiokafka.partitioner import DefaultPartitioner
from kafka_helpers import FAST, eventually
from support.kafka_server import KafkaServer

from microbroker import Delivery, Message, MessageTooLarge, PublishError
from microbroker_kafka import KafkaBroker, KafkaDelivery


def topic() -> str:
    return f"kafka-producing.{uuid.uuid4().hex[:10]}"


async def test_keyed_records_land_where_aiokafka_puts_them(kafka_server: KafkaServer) -> None:
    """The murmur2 placement other Kafka clients share, so keyed streams interoperate."""
    t = topic()
    partitions = 5
    async with (
        KafkaBroker(kafka_server.address, **{**FAST, "partitions": partitions}) as pub,
        KafkaBroker(kafka_server.address, **{**FAST, "partitions": partitions}) as sub,
    ):
        seen: list[KafkaDelivery] = []

        async def handler(delivery: Delivery) -> None:
            assert isinstance(delivery, KafkaDelivery)
            seen.append(delivery)

        await sub.subscribe(t, handler)
        keys = [f"customer-{n}".encode() for n in range(60)]
        for key in keys:
            await pub.publish(t, Message(key), key=key)
        await eventually(lambda: len(seen) >= len(keys), 30, "delivery of 60 keyed records")
        every = list(range(partitions))
        expected = {key: DefaultPartitioner()(key, every, every) for key in keys}
        placed = {d.key: d.partition for d in seen}
        assert placed == expected
        assert len(set(placed.values())) == partitions  # the keys did spread


async def test_publishers_sharing_batches_keep_their_order_and_lose_nothing(
    new_kafka_server: Callable[..., KafkaServer],
) -> None:
    """Eight publishers on one partition, the server stalled so that every batch waits.

    Small batches fill at once; each publisher in turn opens a batch the others
    append to, then waits for room. One of them is cancelled while it waits: the
    records the others put in the batch it opened must still be sent.
    """
    server = new_kafka_server(name="tansu-shared-batches")
    t = topic()
    options = {**FAST, "batch_size": 1024, "confirm": False, "request_timeout": 30.0}
    async with (
        KafkaBroker(server.address, **options) as pub,
        KafkaBroker(server.address, **FAST) as sub,
    ):
        got: dict[str, list[int]] = defaultdict(list)

        async def handler(delivery: Delivery) -> None:
            who, n = delivery.message.body.decode().rstrip(".").split(":")
            got[who].append(int(n))

        await sub.subscribe(t, handler)
        await pub.publish(t, Message(b"made:0"))
        returned: dict[str, int] = defaultdict(int)

        async def publisher(who: str, count: int) -> None:
            for n in range(count):
                await pub.publish(t, Message(f"{who}:{n}".encode() + b"." * 40))
                returned[who] += 1

        server.pause()
        try:
            tasks = {f"p{i}": asyncio.create_task(publisher(f"p{i}", 300)) for i in range(8)}
            # Until every publisher waits for room (the stalled server drains nothing).
            await eventually(lambda: sum(returned.values()) > 50, 20, "publishers filling batches")
            while True:
                before = dict(returned)
                await asyncio.sleep(0.5)
                if returned == before:
                    break
            assert not any(task.done() for task in tasks.values())
            cancelled = "p3"
            tasks[cancelled].cancel()
        finally:
            server.resume()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        assert tasks[cancelled].cancelled()
        await eventually(
            lambda: (
                all(len(got[w]) >= 300 for w in tasks if w != cancelled)
                and len(got[cancelled]) >= returned[cancelled]
            ),
            60,
            "delivery of every returned publish",
        )
        for who in tasks:
            numbers = got[who]
            assert numbers == sorted(numbers), f"{who}'s records out of order"
            assert numbers == list(range(len(numbers))), f"{who}'s records repeated or missing"
        # The cancelled publisher's records up to the last that returned arrived; the
        # one it was waiting with may have been sent too (it was in the batch).
        assert returned[cancelled] <= len(got[cancelled]) <= returned[cancelled] + 1


async def test_a_failed_batch_nobody_awaits_is_logged_with_its_record_count(
    new_kafka_server: Callable[..., KafkaServer], caplog: pytest.LogCaptureFixture
) -> None:
    """confirm=False publishers are not told of a failure; the log is, with what was lost."""
    server = new_kafka_server(name="tansu-failed-batch")
    t = topic()
    broker = KafkaBroker(server.address, confirm=False, request_timeout=1.0, **FAST)
    await broker.connect()
    try:
        await broker.publish(t, Message(b"topic made"))
        with caplog.at_level(logging.ERROR, logger="microbroker.broker.kafka"):
            server.pause()
            try:
                for n in range(10):
                    await broker.publish(t, Message(b"%d" % n))  # buffered: returns at once
                await eventually(
                    lambda: any("not stored" in r.getMessage() for r in caplog.records),
                    20,
                    "the batch's failure to be logged",
                )
            finally:
                server.resume()
    finally:
        await broker.disconnect()
    errors = [r.getMessage() for r in caplog.records if "not stored" in r.getMessage()]
    assert errors[0].startswith(f"kafka: 10 record(s) published to {t} partition 0")
    assert server.address in errors[0]


async def test_a_record_over_the_request_limit_fails_at_publish(
    kafka_server: KafkaServer,
) -> None:
    """Headers count against max_message_size (MessageTooLarge, before anything is sent); a
    record key is not a header, and one that takes a record past the request limit is an
    error at publish, not a drop."""
    t = topic()
    async with KafkaBroker(kafka_server.address, max_message_size=1024, **FAST) as pub:
        await pub.publish(t, Message(b"small"))  # the topic exists, the fast path is taken
        with pytest.raises(MessageTooLarge):
            await pub.publish(t, Message(b"body", {"X-Big": "h" * 1024}))
        big_key = b"k" * (300 * 1024)  # over max_message_size + 256 KiB of headroom
        with pytest.raises(PublishError, match="max_request_size"):
            await pub.publish(t, Message(b"body"), key=big_key)
        await pub.publish(t, Message(b"after"))  # and the producer goes on
