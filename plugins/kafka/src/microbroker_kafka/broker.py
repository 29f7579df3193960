"""The Kafka broker, on aiokafka: consumer groups, record keys and headers, settled-only commits.

A subscription with a ``queue`` is a Kafka consumer group named after the
queue: each partition belongs to one member, so each message goes to one
member. A subscription without a queue reads every partition of its topic by
itself (manual assignment, no group), so every such subscriber gets every
message, as go-micro's unique-group subscribers do, without leaving a group
behind on the server for each of them.

Offsets: a group commits, per partition, the offset after the longest run of
settled messages (acked, or given up by the retry policy) from where it
started; see :mod:`microbroker_kafka._offsets`. The module split: options
(``options``), connecting (``_connection``), publishing (here and
``_producing``), subscriptions (``_subscriber``), deliveries (``_delivery``),
offsets (``_offsets``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # type: ignore[import-untyped]
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]
from aiokafka.errors import KafkaError as AioKafkaError  # type: ignore[import-untyped]
from aiokafka.errors import TopicAlreadyExistsError

from microbroker import InvalidTopic, Message, NotConnected, PublishError
from microbroker.transport import (
    Broker,
    Capabilities,
    Handler,
    encode_envelope,
    header_pairs,
)

from ._connection import start_clients

if TYPE_CHECKING:
    from ._confluent import ConfluentProducer
from ._delivery import KafkaDelivery
from ._producing import Batcher
from ._subscriber import KafkaSubscriber
from .errors import SubscribeError
from .options import KafkaOptions, parse_address

logger = logging.getLogger("microbroker.broker.kafka")

DEFAULT_ADDRESS = "127.0.0.1:9092"
_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}").fullmatch
_STREAM_HEADER = "Micro-Stream"


def check_kafka_topic(topic: str) -> None:
    """Raise :class:`InvalidTopic` for a name Kafka cannot carry."""
    if type(topic) is not str or not _TOPIC(topic) or topic in (".", ".."):
        raise InvalidTopic(
            f"invalid kafka topic {topic!r}: use 1 to 249 letters, digits, '.', '_' and '-'"
        )


def _capabilities(settings: KafkaOptions) -> Capabilities:
    return Capabilities(
        # A group spreads its messages over its members by partition: with one
        # partition a group has one active member, so only then is it promised.
        queue_groups=settings.partitions > 1,
        ack=True,
        at_least_once=True,
        persistence=settings.persistence,
        # One partition keeps publish order; several keep it per record key only.
        ordering=settings.partitions == 1,
        reconnect=True,
        wildcards=None,
        max_message_size=settings.max_message_size,
    )


class KafkaBroker(Broker):
    """The ``kafka`` broker. Options are those of :class:`~microbroker_kafka.KafkaOptions`.

    Each option not given is read from ``MICRO_KAFKA_<OPTION>``. Publish
    options: ``key`` (bytes or str) sets the record key, so that the records
    of one key go to one partition and keep their order; ``partition`` picks
    the partition outright. Subscribe options: any broker option, for that
    subscription alone (``offset_reset="earliest"``...).
    """

    name = "kafka"
    default_address = DEFAULT_ADDRESS

    def __init__(self, address: str | None = None, **options: Any) -> None:
        super().__init__(address, **options)
        servers = parse_address(self._address)
        self.settings = KafkaOptions.from_arguments(options, bootstrap_servers=servers)
        # Files named by tls_*_file are read now: a bad one fails here, not at connect.
        self._tls: ssl.SSLContext | None = self.settings.tls_context()
        self.capabilities = _capabilities(self.settings)
        self._envelope = self.settings.envelope
        self._producer: AIOKafkaProducer | None = None
        self._batcher: Batcher | None = None
        self._admin: AIOKafkaAdminClient | None = None
        # client="confluent": librdkafka's producer and admin client instead.
        self._rd_producer: ConfluentProducer | None = None
        self._rd_admin: Any = None
        self._topics: set[str] = set()
        self._creating: dict[str, asyncio.Future[None]] = {}
        self._subscribers: set[KafkaSubscriber] = set()
        self._connected = False

    @property
    def connected(self) -> bool:
        return self._connected

    async def connect(self) -> None:
        if self._connected:
            return
        if self.settings.client == "confluent":
            from ._confluent import start_confluent  # the extra: imported only when chosen

            self._rd_producer, self._rd_admin = await start_confluent(self.settings)
        else:
            producer, admin = await start_clients(self.settings, self._tls)
            self._producer, self._admin = producer, admin
            self._batcher = Batcher(producer, self.settings)
        self._connected = True

    async def disconnect(self) -> None:
        if not self._connected:
            return
        self._connected = False
        for sub in list(self._subscribers):
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        producer, self._producer = self._producer, None
        batcher, self._batcher = self._batcher, None
        admin, self._admin = self._admin, None
        rd_producer, self._rd_producer = self._rd_producer, None
        self._rd_admin = None
        drain = self.settings.drain_timeout
        if rd_producer is not None:
            try:
                await asyncio.wait_for(rd_producer.flush(), drain)
            except TimeoutError:
                self._warn_unconfirmed(drain)
            await rd_producer.close()
        if producer is not None and batcher is not None:
            try:
                # What confirm=False publishes left buffered or in flight.
                await asyncio.wait_for(_flush(batcher, producer), drain)
            except TimeoutError:
                self._warn_unconfirmed(drain)
            except Exception as exc:
                logger.debug("kafka: flushing the producer: %s", exc)
            batcher.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), drain)
        if admin is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(admin.close(), drain)

    def _warn_unconfirmed(self, drain: float) -> None:
        logger.warning(
            "kafka: published records were still unconfirmed by %s after "
            "drain_timeout=%ss; disconnecting drops those not yet stored "
            "(publish with confirm=True to know)",
            ",".join(self.settings.bootstrap_servers),
            drain,
        )

    def _forget(self, sub: KafkaSubscriber) -> None:
        self._subscribers.discard(sub)

    # Topics. ----------------------------------------------------------------------

    async def _ensure_topic(self, topic: str) -> None:
        """Create ``topic`` (with ``partitions``) unless it exists; once per topic and broker."""
        if topic in self._topics:
            return
        admin = self._admin if self._rd_producer is None else self._rd_admin
        if admin is None:  # auto_create_topics=False: the topic is the operator's to make
            self._topics.add(topic)
            return
        pending = self._creating.get(topic)
        if pending is not None:
            await asyncio.shield(pending)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._creating[topic] = future
        try:
            s = self.settings
            if self._rd_producer is not None:
                from ._confluent import create_topic

                await create_topic(admin, topic, s.partitions, s.replication_factor)
            else:
                with contextlib.suppress(TopicAlreadyExistsError):
                    await admin.create_topics([NewTopic(topic, s.partitions, s.replication_factor)])
            self._topics.add(topic)
            future.set_result(None)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning
            raise
        finally:
            del self._creating[topic]

    async def _partitions_of(self, consumer: AIOKafkaConsumer, topic: str) -> list[int]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.join_timeout
        # aiokafka's metadata refresh is its client's; ConfluentConsumer has it itself.
        refresh = getattr(consumer, "force_metadata_update", None) or (
            consumer._client.force_metadata_update
        )
        while True:
            await refresh()
            partitions = consumer.partitions_for_topic(topic)
            if partitions:
                return sorted(partitions)
            if loop.time() > deadline:
                raise SubscribeError(f"kafka topic {topic!r} has no partitions (does it exist?)")
            await asyncio.sleep(0.05)

    # The transport's half of publish and subscribe. ------------------------------------

    async def send(self, topic: str, message: Message, **options: Any) -> None:
        known = topic in self._topics
        if not known:
            check_kafka_topic(topic)
        headers = message.headers
        body = message.body
        key = partition = None
        if options:
            key = options.pop("key", None)
            partition = options.pop("partition", None)
            if options:
                raise TypeError(f"unknown kafka publish option(s): {', '.join(sorted(options))}")
            if isinstance(key, str):
                key = key.encode()
        if headers and key is None and partition is None:
            # The frames of one RPC stream share a partition, so they keep their order.
            stream = headers.get(_STREAM_HEADER)
            if stream is not None:
                key = stream.encode()
        value = body if type(body) is bytes else bytes(body)
        if self._envelope:
            value = encode_envelope(headers, value)
            headers = {}
        if not known:
            try:
                await self._ensure_topic(topic)
            except AioKafkaError as exc:
                raise PublishError(f"kafka topic {topic!r} could not be created: {exc}") from exc
        rd_producer = self._rd_producer
        if rd_producer is not None:
            # librdkafka takes the headers as a dict, and encodes its str values in C.
            fields = (headers if type(headers) is dict else dict(headers)) if headers else None
            try:
                try:
                    future = rd_producer.produce(topic, value, key, partition, fields)
                except BufferError:
                    future = await rd_producer.produce_later(topic, value, key, partition, fields)
                if future is not None:
                    await future
            except AioKafkaError as exc:
                self._topics.discard(topic)
                raise PublishError(f"kafka publish to {topic!r} failed: {exc}") from exc
            return
        producer, batcher = self._producer, self._batcher
        if producer is None or batcher is None:
            raise NotConnected("kafka broker is not connected: call connect() first")
        record_headers = header_pairs(headers) if headers else None
        try:
            future = batcher.append(topic, partition, key, value, record_headers)
            if future is None:
                future = await batcher.open(topic, partition, key, value, record_headers)
            if future is not None:
                if self.settings.confirm:
                    await future
                return
            # Not in the producer's metadata yet: send() waits for it.
            try:
                future = await producer.send(
                    topic, value, key=key, partition=partition, headers=record_headers
                )
            except AssertionError:
                # aiokafka asserts that a given partition is in its (cached) metadata.
                if partition is None:
                    raise
                await self._check_partition(producer, topic, partition)
                future = await producer.send(
                    topic, value, key=key, partition=partition, headers=record_headers
                )
            if self.settings.confirm:
                await future
        except AioKafkaError as exc:
            # The topic may have gone with a server that lost its storage: check it again.
            self._topics.discard(topic)
            if not self._connected:
                raise NotConnected("kafka broker disconnected while publishing") from exc
            raise PublishError(f"kafka publish to {topic!r} failed: {exc}") from exc

    async def _check_partition(
        self, producer: AIOKafkaProducer, topic: str, partition: int
    ) -> None:
        """Refresh the metadata for a partition the producer does not know (added lately?)."""
        await producer.client.force_metadata_update()
        known = producer.client.cluster.partitions_for_topic(topic) or set()
        if partition not in known:
            raise PublishError(
                f"kafka topic {topic!r} has no partition {partition} "
                f"(it has {len(known)} partitions)"
            )

    async def receive(
        self,
        topic: str,
        deliver: Handler,
        *,
        queue: str | None,
        auto_ack: bool,
        **options: Any,
    ) -> KafkaSubscriber:
        check_kafka_topic(topic)
        if queue is not None and (type(queue) is not str or not _TOPIC(queue)):
            raise ValueError(f"invalid kafka queue (group) name {queue!r}")
        settings = self.settings.replace(**options) if options else self.settings
        tls = settings.tls_context() if options else self._tls
        try:
            await self._ensure_topic(topic)
        except AioKafkaError as exc:
            raise SubscribeError(f"kafka topic {topic!r} could not be created: {exc}") from exc
        sub = KafkaSubscriber(self, topic, deliver, queue, auto_ack, settings, tls)
        try:
            await sub.start()
        except AioKafkaError as exc:
            raise SubscribeError(f"kafka subscription to {topic!r} failed: {exc}") from exc
        self._subscribers.add(sub)
        return sub


async def _flush(batcher: Batcher, producer: AIOKafkaProducer) -> None:
    await batcher.flush()
    await producer.flush()


__all__ = [
    "DEFAULT_ADDRESS",
    "KafkaBroker",
    "KafkaDelivery",
    "KafkaSubscriber",
    "check_kafka_topic",
]
