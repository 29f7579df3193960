"""Kafka on tansu: raw aiokafka, microbroker's KafkaBroker, FastStream's KafkaBroker.

The server is :class:`tests.support.kafka_server.KafkaServer`, as in the tests.
Every subscriber without a queue is a consumer group of its own; a queue group
is one consumer group over a topic of four partitions. No
variant waits for each publish to be acknowledged (raw ``producer.send``,
microbroker ``confirm=False``, FastStream ``no_confirm=True``); all read from
the earliest offset of a fresh topic.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import importlib.util
import uuid
from contextlib import AbstractContextManager
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from microbroker_kafka import KafkaBroker

from . import Hit, Publish, Transport, Variant
from .common import FastStreamVariant, MicrobrokerVariant

PARTITIONS = 4


class RawKafka(Variant):
    kind = "raw"

    def __init__(self, address: str) -> None:
        self.address = address

    async def open(self) -> None:
        self.producer = AIOKafkaProducer(bootstrap_servers=self.address, linger_ms=5)
        await self.producer.start()
        self.consumers: list[AIOKafkaConsumer] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.topics: set[str] = set()

    async def subscribe(self, topic: str, queue: str | None, hit: Hit) -> None:
        if topic not in self.topics:
            admin = AIOKafkaAdminClient(bootstrap_servers=self.address)
            await admin.start()
            try:
                await admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
            finally:
                await admin.close()
            self.topics.add(topic)
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=self.address,
            group_id=queue or f"raw-{uuid.uuid4().hex[:8]}",
            auto_offset_reset="earliest",
            fetch_max_wait_ms=100,
        )
        await consumer.start()
        self.consumers.append(consumer)

        async def pump() -> None:
            async for _ in consumer:
                hit()

        self.tasks.append(asyncio.create_task(pump()))

    def publisher(self, topic: str, body: bytes) -> Publish:
        send = self.producer.send

        async def publish() -> None:
            await send(topic, body)

        return publish

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for consumer in self.consumers:
            await consumer.stop()
        await self.producer.stop()


class RawConfluent(Variant):
    """librdkafka through confluent-kafka, as a user of it writes it without microbroker.

    ``produce()`` only queues in C (``poll(0)`` every thousand records serves the
    delivery reports); each consumer's ``consume()`` runs in a thread of its own.
    """

    kind = "raw-confluent"

    def __init__(self, address: str) -> None:
        self.address = address

    async def open(self) -> None:
        import confluent_kafka

        self.ck = confluent_kafka
        self.producer = confluent_kafka.Producer(
            {"bootstrap.servers": self.address, "linger.ms": 5}
        )
        self.consumers: list[Any] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.stopping = False
        self.sent = 0

    async def subscribe(self, topic: str, queue: str | None, hit: Hit) -> None:
        from confluent_kafka.admin import AdminClient
        from confluent_kafka.admin import NewTopic as CkNewTopic

        admin = AdminClient({"bootstrap.servers": self.address})
        futures = admin.create_topics([CkNewTopic(topic, PARTITIONS, 1)])
        with contextlib.suppress(self.ck.KafkaException):
            await asyncio.wrap_future(futures[topic])
        consumer = self.ck.Consumer(
            {
                "bootstrap.servers": self.address,
                "group.id": queue or f"raw-{uuid.uuid4().hex[:8]}",
                "auto.offset.reset": "earliest",
                "fetch.wait.max.ms": 100,
            }
        )
        consumer.subscribe([topic])
        self.consumers.append(consumer)
        thread = concurrent.futures.ThreadPoolExecutor(1)
        loop = asyncio.get_running_loop()

        async def pump() -> None:
            while not self.stopping:
                records = await loop.run_in_executor(thread, consumer.consume, 1000, 0.05)
                for record in records:
                    if record.error() is None:
                        hit()

        self.tasks.append(asyncio.create_task(pump()))

    def publisher(self, topic: str, body: bytes) -> Publish:
        produce, poll = self.producer.produce, self.producer.poll

        async def publish() -> None:
            while True:
                try:
                    produce(topic, body)
                    break
                except BufferError:  # librdkafka's queue is full: let it drain
                    poll(0)
                    await asyncio.sleep(0.001)
            self.sent += 1
            if self.sent % 1000 == 0:
                poll(0)

        return publish

    async def close(self) -> None:
        self.stopping = True
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await asyncio.to_thread(self.producer.flush, 10)
        for consumer in self.consumers:
            await asyncio.to_thread(consumer.close)


def _server() -> AbstractContextManager[Any]:
    from support.kafka_server import KafkaServer

    return KafkaServer()


def _faststream(address: str) -> FastStreamVariant:
    from faststream.kafka import KafkaBroker as FsKafkaBroker

    def make() -> Any:
        return FsKafkaBroker(address, logger=None)

    def sub_options(topic: str, queue: str | None) -> dict[str, Any]:
        return {"group_id": queue or f"fs-{uuid.uuid4().hex[:8]}", "auto_offset_reset": "earliest"}

    return FastStreamVariant(
        make, subscriber_options=sub_options, publish_options=lambda topic: {"no_confirm": True}
    )


def transport() -> Transport:
    def micro(server: Any, client: str = "aiokafka") -> Variant:
        address = server.address
        return MicrobrokerVariant(
            lambda: KafkaBroker(
                address,
                confirm=False,
                offset_reset="earliest",
                partitions=PARTITIONS,
                client=client,
            )
        )

    variants: dict[str, Any] = {
        "raw": lambda server: RawKafka(server.address),
        "microbroker": micro,
        "faststream": lambda server: _faststream(server.address),
    }
    if importlib.util.find_spec("confluent_kafka") is not None:
        # microbroker on librdkafka (client="confluent") against raw confluent-kafka.
        variants["raw-confluent"] = lambda server: RawConfluent(server.address)
        variants["microbroker-confluent"] = lambda server: micro(server, "confluent")

    return Transport(
        "kafka",
        variants,
        _server,
        [
            "no publish waits for its acknowledgement; every subscriber reads from the earliest"
            " offset; topics of 4 partitions; 1->1 and queue4 only, no scaling (each consumer"
            " group join is a rebalance of seconds on tansu)"
        ],
        shapes=("1->1", "queue4"),
        scaling=False,
    )
