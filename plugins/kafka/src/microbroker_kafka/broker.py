"""The Kafka broker, on aiokafka: consumer groups, record keys and headers, acked-only commits.

A subscription with a ``queue`` is a Kafka consumer group named after the
queue: each partition belongs to one member, so each message goes to one
member. A subscription without a queue reads every partition of its topic by
itself (manual assignment, no group), so every such subscriber gets every
message, as go-micro's unique-group subscribers do, without leaving a group
behind on the server for each of them. It watches the topic's metadata and
reads a partition added to the topic later from that partition's beginning.

Offsets: a group commits, per partition, the offset after the longest run of
*acked* messages from where it started. A nack, a handler error or a message
still being handled stops that run, so the committed offset never passes a
message that was not acked; whatever this member had not acked when it stops
or loses a partition is delivered again to the member that takes it over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
import uuid
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

from aiokafka import (  # type: ignore[import-untyped]
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRebalanceListener,
    TopicPartition,
)
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]
from aiokafka.errors import KafkaError as AioKafkaError  # type: ignore[import-untyped]
from aiokafka.errors import TopicAlreadyExistsError

from microbroker import (
    Broker,
    Capabilities,
    Delivery,
    InvalidTopic,
    Message,
    NotConnected,
    PublishError,
    Subscriber,
)
from microbroker._broker import Handler, dispatcher, header_pairs

from ._producing import Batcher
from .errors import KafkaConnectError, SubscribeError
from .options import KafkaOptions, parse_address

logger = logging.getLogger("microbroker.kafka")

CONTENT_TYPE = "Content-Type"
_CONTENT_TYPES: dict[bytes, str] = {}
"""Content types as received, decoded: a typed subscriber reads one per delivery."""
RecordHeaders = Sequence[tuple[str, bytes]]
"""A Kafka record's headers as aiokafka reads them: ``(name, value)`` pairs."""

DEFAULT_ADDRESS = "127.0.0.1:9092"
_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}").fullmatch
_COMMIT_TIMEOUT = 3.0
_TLS_PROBE_TIMEOUT = 2.0
_PARTITION_CHECK = 0.25
"""Seconds between looks at the cached metadata for new partitions (broadcast subscribers)."""
_STREAM_HEADER = "Micro-Stream"
_OPTION_NAMES = frozenset(KafkaOptions.__dataclass_fields__)


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


class KafkaDelivery(Delivery):
    """A delivery from a Kafka partition; ack and nack settle its offset.

    The record's headers are turned into the message's dict the first time
    :attr:`message` is read: a typed subscriber that never reads its metadata
    only looks for ``Content-Type``.
    """

    __slots__ = ("_body", "_msg", "_raw_headers", "_sub", "_tracker", "key", "offset", "partition")

    def __init__(
        self,
        topic: str,
        body: bytes,
        headers: RecordHeaders | dict[str, str],
        queue: str | None,
        attempt: int,
        sub: KafkaSubscriber,
        tracker: _Partition,
        partition: int,
        offset: int,
        key: bytes | None,
    ) -> None:
        """``headers``: the record's ``(name, bytes)`` pairs, or a message's dict."""
        # Delivery.__init__, inlined: this runs once per message.
        self.topic = topic
        self._body = body
        if type(headers) is dict:
            self._msg: Message | None = Message(body, headers)
            self._raw_headers: RecordHeaders = ()
        else:
            self._msg = None
            self._raw_headers = headers  # type: ignore[assignment]
        self.queue = queue
        self.attempt = attempt
        self._state = 0
        self._sub = sub
        self._tracker = tracker
        #: The partition and offset of the record, and its key (``None`` without one).
        self.partition = partition
        self.offset = offset
        self.key = key

    @property
    def message(self) -> Message:
        """The message: the record's value and its headers."""
        message = self._msg
        if message is None:
            raw = self._raw_headers
            message = self._msg = Message(
                self._body, {k: v.decode("utf-8", "replace") for k, v in raw} if raw else {}
            )
        return message

    @message.setter
    def message(self, message: Message) -> None:
        self._msg = message
        self._body = message.body
        self._raw_headers = ()

    @property
    def body(self) -> bytes:
        return self._body

    @property
    def content_type(self) -> str | None:
        if self._msg is None:
            found = None
            for name, value in self._raw_headers:
                if name == "Content-Type":
                    found = value  # the last one wins, as in the dict
            if found is not None:
                text = _CONTENT_TYPES.get(found)
                if text is None:
                    text = found.decode("utf-8", "replace")
                    if len(_CONTENT_TYPES) < 64:  # from the wire: bounded
                        _CONTENT_TYPES[found] = text
                return text
        return self.message.header(CONTENT_TYPE)

    async def ack(self) -> None:
        # Settled here rather than through Delivery's settle hook: this runs once per message.
        if self._state == 0:
            self._state = 1
            self._tracker.ack(self.offset)

    async def _settle_ack(self) -> None:
        self._tracker.ack(self.offset)

    async def _settle_nack(self, delay: float | None) -> None:
        self._sub._nacked(self, delay)


class _Partition:
    """The offsets of one partition this subscriber holds: which ones may be committed."""

    __slots__ = ("acked", "commit", "committed", "next", "outstanding", "revoked")

    def __init__(self, start: int) -> None:
        self.outstanding: deque[int] = deque()
        self.acked: set[int] = set()
        self.commit = start
        """The offset after the longest acked run: what may be committed."""
        self.committed = start
        self.next = start
        """The offset after the last record handed to the handler: where to read on."""
        self.revoked = False

    def deliver(self, offset: int) -> None:
        self.outstanding.append(offset)

    def ack(self, offset: int) -> None:
        outstanding = self.outstanding
        if outstanding and outstanding[0] == offset:
            outstanding.popleft()
            last = offset
            acked = self.acked
            while outstanding and outstanding[0] in acked:
                last = outstanding.popleft()
                acked.discard(last)
            self.commit = last + 1
        elif offset in outstanding:
            self.acked.add(offset)

    @property
    def dirty(self) -> bool:
        return self.commit > self.committed and not self.revoked


class KafkaSubscriber(Subscriber):
    """A subscription: a consumer of its own, in the queue's group or reading every partition."""

    def __init__(
        self,
        broker: KafkaBroker,
        topic: str,
        handler: Handler,
        queue: str | None,
        auto_ack: bool,
        settings: KafkaOptions,
    ) -> None:
        super().__init__(topic, queue, auto_ack)
        self._broker = broker
        # The handler under dispatch's settlement rules.
        self._handler = dispatcher(handler, auto_ack)
        self._settings = settings
        self._consumer: AIOKafkaConsumer | None = None
        self._partitions: dict[TopicPartition, _Partition] = {}
        self._task: asyncio.Task[None] | None = None
        self._committer: asyncio.Task[None] | None = None
        self._redeliveries: set[asyncio.Task[None]] = set()
        self._assigned = asyncio.Event()
        self._unplaced: set[TopicPartition] = set()
        """Assigned partitions whose position the assignment callback could not learn in time."""
        self._busy: asyncio.Lock = asyncio.Lock()
        self._active = False
        self._closing = False

    @property
    def active(self) -> bool:
        return self._active

    # Starting. ------------------------------------------------------------------

    async def _start(self) -> None:
        s = self._settings
        kwargs = s.consumer_kwargs()
        kwargs.update(fetch_max_wait_ms=int(s.fetch_wait * 1000), retry_backoff_ms=50)
        if self.queue is not None:
            kwargs.update(
                group_id=self.queue,
                rebalance_timeout_ms=int(s.rebalance_timeout * 1000),
                # A JoinGroup is answered only when the group has settled, up to
                # rebalance_timeout later: the Java client waits that plus 5 s for it.
                request_timeout_ms=max(
                    kwargs["request_timeout_ms"], int((s.rebalance_timeout + 5.0) * 1000)
                ),
            )
        consumer = AIOKafkaConsumer(**kwargs)
        self._consumer = consumer
        try:
            await consumer.start()
            if self.queue is not None:
                consumer.subscribe([self.topic], listener=_Listener(self))
                self._task = asyncio.create_task(self._run(), name=f"kafka {self.topic}")
                try:
                    await asyncio.wait_for(self._assigned.wait(), s.join_timeout)
                except TimeoutError as exc:
                    raise SubscribeError(
                        f"kafka group {self.queue!r} assigned no partition of {self.topic!r} "
                        f"within {s.join_timeout}s"
                    ) from exc
            else:
                partitions = await self._broker._partitions_of(consumer, self.topic)
                tps = [TopicPartition(self.topic, p) for p in partitions]
                consumer.assign(tps)
                # aiokafka retries a log-end lookup the server cannot answer (a partition
                # it does not have, a lost connection) for ever, and silently.
                try:
                    async with asyncio.timeout(s.join_timeout):
                        await consumer.seek_to_end(*tps)
                        for tp in tps:
                            self._partitions[tp] = _Partition(await consumer.position(tp))
                except TimeoutError as exc:
                    unknown = [tp.partition for tp in tps if tp not in self._partitions]
                    raise SubscribeError(
                        f"kafka could not learn where the log of {self.topic!r} ends "
                        f"(partitions {unknown}) within {s.join_timeout}s"
                    ) from exc
                self._task = asyncio.create_task(self._run(), name=f"kafka {self.topic}")
        except BaseException:
            await self._stop_consumer()
            raise
        self._active = True
        if self.queue is not None:
            self._committer = asyncio.create_task(self._commit_loop())

    async def _on_assigned(self, tps: Iterable[TopicPartition]) -> None:
        consumer = self._consumer
        if consumer is None:
            return  # a join completing while the subscriber stops
        tps = list(tps)
        self._unplaced.clear()
        positions = await self._positions(consumer, tps)
        unknown = [tp for tp in tps if tp not in positions]
        if unknown:
            # The group's coordination waits for this callback, and what the position
            # waits for (the committed offset) may wait for the coordination: a partition
            # is placed by its first fetched record instead.
            self._unplaced.update(unknown)
            logger.warning(
                "kafka: group %r could not learn its position in %s within %ss: "
                "each is read from the first record the server hands out for it",
                self.queue,
                ", ".join(f"{tp.topic}[{tp.partition}]" for tp in unknown),
                self._settings.request_timeout,
            )
            tps = [tp for tp in tps if tp in positions]
        # A committed offset beyond the end of the log: the server lost records.
        try:
            ends = await consumer.end_offsets(tps) if tps else {}
        except AioKafkaError as exc:
            logger.info("kafka: could not read the log ends of %s: %s", self.topic, exc)
            ends = {}
        beyond = [tp for tp in tps if tp in ends and positions[tp] > ends[tp]]
        moved = await self._go_on_from_reset(consumer, beyond, positions) if beyond else {}
        positions.update(moved)
        fresh: dict[TopicPartition, int] = {}
        for tp in tps:
            position = positions[tp]
            self._partitions[tp] = _Partition(position)
            if tp in moved or await self._committed(consumer, tp) is None:
                fresh[tp] = position
        if fresh:
            # The group's starting point is fixed now, not at the next fetch: what is
            # published from here on is delivered, whichever member reads it later.
            # (The group's coordination waits for this callback: the commit is bounded.)
            await self._commit_within(consumer, fresh, "commit of the starting offsets")
        self._assigned.set()

    async def _positions(
        self, consumer: AIOKafkaConsumer, tps: list[TopicPartition]
    ) -> dict[TopicPartition, int]:
        """The positions of ``tps`` the consumer learns within ``request_timeout``.

        aiokafka waits for a position for ever (retrying silently): a partition
        left out here is one it could not say in time.
        """
        if not tps:
            return {}
        lookups = {tp: asyncio.ensure_future(consumer.position(tp)) for tp in tps}
        try:
            done, _ = await asyncio.wait(lookups.values(), timeout=self._settings.request_timeout)
        finally:
            for lookup in lookups.values():
                lookup.cancel()  # those still waiting (a cancelled callback: all of them)
        return {
            tp: lookup.result()
            for tp, lookup in lookups.items()
            if lookup in done and not lookup.cancelled() and lookup.exception() is None
        }

    async def _commit_within(
        self,
        consumer: AIOKafkaConsumer,
        offsets: dict[TopicPartition, int],
        what: str,
        level: int = logging.INFO,
    ) -> bool:
        """Commit ``offsets`` within ``_COMMIT_TIMEOUT``; False, logged as ``what``, if not.

        Every commit is bounded: aiokafka retries one the server refuses with a
        retriable error (a topic it lost) for ever.
        """
        try:
            await asyncio.wait_for(consumer.commit(offsets), _COMMIT_TIMEOUT)
        except (AioKafkaError, TimeoutError) as exc:
            logger.log(level, "kafka: %s of %s failed: %s", what, list(offsets), exc)
            return False
        return True

    async def _committed(self, consumer: AIOKafkaConsumer, tp: TopicPartition) -> int | None:
        """The group's committed offset of ``tp``; None if it has none or cannot say in time."""
        try:
            offset = await asyncio.wait_for(consumer.committed(tp), _COMMIT_TIMEOUT)
        except (AioKafkaError, TimeoutError):
            return None
        return offset if isinstance(offset, int) else None

    async def _on_revoked(self, tps: Iterable[TopicPartition]) -> None:
        tps = list(tps)
        self._unplaced.difference_update(tps)
        revoked = [tp for tp in tps if tp in self._partitions]
        for tp in revoked:
            self._partitions[tp].revoked = True
        # Let the message being handled finish, so that its ack can be committed.
        if self._busy.locked():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._settings.drain_timeout):
                    async with self._busy:
                        pass
        offsets = {}
        for tp in revoked:
            part = self._partitions.pop(tp)
            if part.commit > part.committed:
                offsets[tp] = part.commit
        if offsets and self._consumer is not None:
            await self._commit_within(self._consumer, offsets, "commit on revoke", logging.WARNING)

    # Delivering. ----------------------------------------------------------------

    async def _run(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        topic, queue, handler = self.topic, self.queue, self._handler
        partitions = self._partitions
        busy = self._busy
        max_records = self._settings.max_poll_records
        # A broadcast subscriber assigns itself the partitions added to its topic.
        watch = queue is None
        loop = asyncio.get_running_loop()
        next_check = loop.time() + _PARTITION_CHECK
        while not self._closing:
            if watch and loop.time() >= next_check:
                next_check = loop.time() + _PARTITION_CHECK
                self._assign_new_partitions(consumer)
            try:
                batches = await consumer.getmany(timeout_ms=200, max_records=max_records)
            except asyncio.CancelledError:
                raise
            except AioKafkaError as exc:
                logger.warning("kafka: fetch on %s failed, retrying: %s", topic, exc)
                await asyncio.sleep(0.2)
                continue
            if not batches:
                if partitions:
                    await self._check_log_ends(consumer)
                continue
            # Which partitions are this subscriber's, now (no await since the fetch).
            owners = {tp: partitions.get(tp) for tp in batches}
            for tp, part in owners.items():
                if part is None and queue is not None:
                    first = batches[tp][0].offset
                    if tp in self._unplaced:
                        # Its position came after the assignment callback gave up on it.
                        self._unplaced.discard(tp)
                        owners[tp] = partitions[tp] = _Partition(first)
                        continue
                    # Assigned, but the assignment callback has not registered it yet:
                    # fetched again from here once it has (it starts where this batch did).
                    with contextlib.suppress(AioKafkaError, AssertionError):
                        consumer.seek(tp, first)
            # One batch at a time holds the lock: redeliveries and revokes wait for its end.
            async with busy:
                for tp, records in batches.items():
                    part = owners[tp]
                    partition = tp.partition
                    for record in records:
                        if part is None or part.revoked or self._closing:
                            # Left for the partition's next owner: aiokafka restarts a
                            # (re)assigned partition from its committed offset.
                            break
                        offset = record.offset
                        part.outstanding.append(offset)
                        part.next = offset + 1
                        await handler(
                            KafkaDelivery(
                                topic,
                                record.value or b"",
                                record.headers,
                                queue,
                                1,
                                self,
                                part,
                                partition,
                                offset,
                                record.key,
                            )
                        )

    async def _check_log_ends(self, consumer: AIOKafkaConsumer) -> None:
        """Go on per ``offset_reset`` on a partition whose log now ends before this subscriber.

        Checked when a fetch brought nothing, against the high watermark of the
        last fetch response (no request of its own).
        """
        partitions = self._partitions
        assigned = consumer.assignment()  # highwater() asserts that a partition is assigned
        beyond = [
            tp
            for tp, part in partitions.items()
            if tp in assigned and (end := consumer.highwater(tp)) is not None and part.next > end
        ]
        if not beyond:
            return
        positions = {tp: partitions[tp].next for tp in beyond}
        async with self._busy:
            try:
                moved = await self._go_on_from_reset(consumer, beyond, positions)
            except AioKafkaError as exc:
                logger.info("kafka: could not reset %s: %s", self.topic, exc)
                return
            for tp, offset in moved.items():
                old = partitions.get(tp)
                if old is None or old.revoked:
                    continue
                old.revoked = True  # its redeliveries stop: those offsets are gone
                partitions[tp] = _Partition(offset)
        if self.queue is not None and moved:
            # Replace the group's committed offset, which points past the end as well.
            await self._commit_within(consumer, moved, "commit after a reset (deferred)")

    async def _go_on_from_reset(
        self,
        consumer: AIOKafkaConsumer,
        tps: list[TopicPartition],
        positions: dict[TopicPartition, int],
    ) -> dict[TopicPartition, int]:
        """Seek partitions whose position lies beyond the end of the server's log.

        Kafka answers a fetch past the end of a partition with
        OFFSET_OUT_OF_RANGE, and the consumer goes on per ``offset_reset``.
        Some Kafka-compatible servers (tansu) answer it with no records, so a
        subscriber whose server lost its log (a restart without durable
        storage) would wait, silently, until the new log grew past its old
        position, and skip every record before it. Returns the new positions.
        """
        reset = self._settings.offset_reset
        if reset == "earliest":
            starts = await consumer.beginning_offsets(tps)
        else:
            starts = await consumer.end_offsets(tps)
        for tp in tps:
            consumer.seek(tp, starts[tp])
            logger.warning(
                "kafka: the server's log of %s partition %d ends before offset %d (it lost "
                "records?): going on from offset %d (offset_reset=%r)",
                tp.topic,
                tp.partition,
                positions[tp],
                starts[tp],
                reset,
            )
        return {tp: starts[tp] for tp in tps}

    def _assign_new_partitions(self, consumer: AIOKafkaConsumer) -> None:
        """Read the partitions the metadata shows beyond those this subscriber reads.

        A new partition is read from its beginning: nothing published to it can
        have been delivered yet. aiokafka has no incremental manual assignment, so
        the whole assignment is replaced; the partitions already read go on from
        the record after the last one handed to the handler, so records fetched
        ahead but not yet handled are fetched again, neither lost nor repeated.
        Runs between two batches, never while one is being handled.
        """
        topic = self.topic
        seen = consumer.partitions_for_topic(topic)
        partitions = self._partitions
        if not seen or len(seen) <= len(partitions):
            return
        fresh = [tp for p in sorted(seen) if (tp := TopicPartition(topic, p)) not in partitions]
        if not fresh:
            return
        resume = {tp: part.next for tp, part in partitions.items()}
        consumer.assign([*resume, *fresh])
        for tp, offset in resume.items():
            consumer.seek(tp, offset)
        for tp in fresh:
            consumer.seek(tp, 0)
            partitions[tp] = _Partition(0)
        logger.info(
            "kafka: %s grew to %d partitions; reading %s from offset 0",
            topic,
            len(seen),
            ", ".join(str(tp.partition) for tp in fresh),
        )

    def _nacked(self, delivery: KafkaDelivery, delay: float | None) -> None:
        # Redelivered after a backoff while the partition goes on: its offset stays
        # outstanding, so no commit passes it until it is acked (or given up).
        task = asyncio.create_task(self._redeliver_later(delivery, delay))
        self._redeliveries.add(task)
        task.add_done_callback(self._redeliveries.discard)

    def _backoff(self, attempt: int, delay: float | None) -> float:
        if delay is not None:
            return max(0.0, delay)
        s = self._settings
        return float(min(s.max_redelivery_delay, s.redelivery_delay * 2 ** (attempt - 1)))

    def _next(self, delivery: KafkaDelivery) -> KafkaDelivery:
        message = delivery.message
        return KafkaDelivery(
            delivery.topic,
            message.body,
            message.headers,
            delivery.queue,
            delivery.attempt + 1,
            self,
            delivery._tracker,
            delivery.partition,
            delivery.offset,
            delivery.key,
        )

    def _given_up(self, delivery: KafkaDelivery) -> bool:
        max_deliver = self._settings.max_deliver
        if max_deliver is not None and delivery.attempt >= max_deliver:
            logger.error(
                "kafka: %s partition %d offset %d given up after %d deliveries",
                delivery.topic,
                delivery.partition,
                delivery.offset,
                delivery.attempt,
            )
            delivery._tracker.ack(delivery.offset)
            return True
        return False

    async def _redeliver_later(self, delivery: KafkaDelivery, delay: float | None) -> None:
        if self._given_up(delivery):
            return
        await asyncio.sleep(self._backoff(delivery.attempt, delay))
        if delivery._tracker.revoked or self._closing:
            return  # the partition's next owner reads it again from the committed offset
        again = self._next(delivery)
        async with self._busy:
            # A nack of this one schedules the next redelivery by itself.
            await self._handler(again)

    # Committing. ----------------------------------------------------------------

    async def _commit_loop(self) -> None:
        interval = self._settings.commit_interval
        # Not ``while True``: on Python 3.11 a cancel that arrives as the commit's
        # wait_for completes is swallowed (CPython gh-86296), and the loop would go on
        # after unsubscribe() cancelled it.
        while not self._closing:
            await asyncio.sleep(interval)
            await self._commit()

    async def _commit(self) -> None:
        consumer = self._consumer
        if consumer is None or self.queue is None:
            return
        offsets = {tp: p.commit for tp, p in self._partitions.items() if p.dirty}
        if not offsets:
            return
        # Failing during a rebalance: the revoke callback commits what is acked.
        if not await self._commit_within(consumer, offsets, "commit (deferred)"):
            return
        for tp, offset in offsets.items():
            part = self._partitions.get(tp)
            if part is not None:
                part.committed = max(part.committed, offset)

    # Stopping. ------------------------------------------------------------------

    async def unsubscribe(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._active = False
        self._broker._forget(self)
        if self._busy.locked():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._settings.drain_timeout):
                    async with self._busy:
                        pass
        tasks = [t for t in (self._task, self._committer, *self._redeliveries) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            # Bounded: a task whose cancel was swallowed (see _commit_loop) must not
            # hold unsubscribe() for ever; stopping the consumer below ends its requests.
            done, pending = await asyncio.wait(tasks, timeout=self._settings.drain_timeout)
            for task in done:
                if not task.cancelled():
                    task.exception()  # retrieved: it ended as it was being stopped
            if pending:
                logger.warning(
                    "kafka: %d task(s) of the subscription to %s did not stop within "
                    "drain_timeout=%ss; stopping its consumer anyway",
                    len(pending),
                    self.topic,
                    self._settings.drain_timeout,
                )
        await self._commit()
        await self._stop_consumer()

    async def _stop_consumer(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is None:
            return
        timeout = self._settings.request_timeout
        try:
            # A group consumer's stop() waits for its coordination to finish (a join
            # in flight, for one): bounded, as the Java client's close() is.
            await asyncio.wait_for(consumer.stop(), timeout)
        except TimeoutError:
            logger.warning(
                "kafka: the consumer of %s did not stop within %ss; closing its connections",
                self.topic,
                timeout,
            )
            with contextlib.suppress(Exception):
                await asyncio.wait_for(consumer._client.close(), timeout)
        except Exception as exc:
            logger.debug("kafka: stopping the consumer of %s: %s", self.topic, exc)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, sub: KafkaSubscriber) -> None:
        self._sub = sub

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self._sub._on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self._sub._on_assigned(assigned)


class KafkaBroker(Broker):
    """The ``kafka`` broker. Options are those of :class:`~microbroker_kafka.KafkaOptions`.

    Publish options: ``key`` (bytes or str) sets the record key, so that the
    records of one key go to one partition and keep their order; ``partition``
    picks the partition outright.
    """

    default_address = DEFAULT_ADDRESS

    def __init__(self, address: str | None = None, **options: Any) -> None:
        unknown = set(options) - _OPTION_NAMES
        if unknown:
            raise TypeError(
                f"unknown kafka option(s): {', '.join(sorted(unknown))}; "
                f"the options are: {', '.join(sorted(_OPTION_NAMES))}"
            )
        super().__init__(address, **options)
        servers = parse_address(self._address)
        self.settings = KafkaOptions(**{**options, "bootstrap_servers": servers})
        self.capabilities = _capabilities(self.settings)
        self._producer: AIOKafkaProducer | None = None
        self._batcher: Batcher | None = None
        self._admin: AIOKafkaAdminClient | None = None
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
        s = self.settings
        producer = AIOKafkaProducer(**s.producer_kwargs())
        admin = AIOKafkaAdminClient(**s.common_kwargs()) if s.auto_create_topics else None
        try:
            await producer.start()
            if admin is not None:
                await admin.start()
        except Exception as exc:
            # aiokafka raises more than its own errors here: a SCRAM exchange the
            # server ends with an error (wrong credentials) surfaces as KeyError.
            with contextlib.suppress(Exception):
                await producer.stop()
            if admin is not None:
                with contextlib.suppress(Exception):
                    await admin.close()
            # aiokafka only says it could not bootstrap: ask the TLS handshake why.
            handshake = await _tls_problem(s) if s.tls is not None else None
            raise KafkaConnectError(_connect_failure(s, exc, handshake)) from exc
        self._producer, self._admin = producer, admin
        self._batcher = Batcher(producer, s)
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
        drain = self.settings.drain_timeout
        if producer is not None and batcher is not None:
            try:
                # What confirm=False publishes left buffered or in flight.
                await asyncio.wait_for(_flush(batcher, producer), drain)
            except TimeoutError:
                logger.warning(
                    "kafka: published records were still unconfirmed by %s after "
                    "drain_timeout=%ss; disconnecting drops those not yet stored "
                    "(publish with confirm=True to know)",
                    ",".join(self.settings.bootstrap_servers),
                    drain,
                )
            except Exception as exc:
                logger.debug("kafka: flushing the producer: %s", exc)
            batcher.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), drain)
        if admin is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(admin.close(), drain)

    def _forget(self, sub: KafkaSubscriber) -> None:
        self._subscribers.discard(sub)

    # Topics. ----------------------------------------------------------------------

    async def _ensure_topic(self, topic: str) -> None:
        if topic in self._topics or self._admin is None:
            return
        pending = self._creating.get(topic)
        if pending is not None:
            await asyncio.shield(pending)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._creating[topic] = future
        try:
            s = self.settings
            with contextlib.suppress(TopicAlreadyExistsError):
                await self._admin.create_topics(
                    [NewTopic(topic, s.partitions, s.replication_factor)]
                )
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
        while True:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic)
            if partitions:
                return sorted(partitions)
            if loop.time() > deadline:
                raise SubscribeError(f"kafka topic {topic!r} has no partitions (does it exist?)")
            await asyncio.sleep(0.05)

    # Publish and subscribe. ---------------------------------------------------------

    async def publish(self, topic: str, message: Message, **options: Any) -> None:
        known = topic in self._topics
        if not (
            known and self._connected and type(message) is Message and type(message.body) is bytes
        ):
            self._check_publish(topic, message)
            if not known:
                check_kafka_topic(topic)
        # The common case (a topic checked before, connected, a plain message) checks only
        # the headers, as it encodes them.
        headers = message.headers
        body = message.body
        if len(body) > self.settings.max_message_size:
            raise PublishError(
                f"a {len(body)} byte body exceeds the kafka broker's max_message_size of "
                f"{self.settings.max_message_size} bytes"
            )
        key = partition = None
        if options:
            key = options.pop("key", None)
            partition = options.pop("partition", None)
            if options:
                raise TypeError(f"unknown kafka publish option(s): {', '.join(sorted(options))}")
            if isinstance(key, str):
                key = key.encode()
        record_headers = None
        if headers:
            if key is None and partition is None:
                # The frames of one RPC stream share a partition, so they keep their order.
                stream = headers.get(_STREAM_HEADER)
                if stream is not None:
                    key = stream.encode()
            record_headers = header_pairs(headers)
        if not known:
            try:
                await self._ensure_topic(topic)
            except AioKafkaError as exc:
                raise PublishError(f"kafka topic {topic!r} could not be created: {exc}") from exc
        producer, batcher = self._producer, self._batcher
        if producer is None or batcher is None:
            raise NotConnected("kafka broker is not connected: call connect() first")
        value = body if type(body) is bytes else bytes(body)
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

    async def subscribe(
        self,
        topic: str,
        handler: Handler,
        *,
        queue: str | None = None,
        auto_ack: bool = True,
        **options: Any,
    ) -> KafkaSubscriber:
        self._check_subscribe(topic)
        check_kafka_topic(topic)
        if queue is not None and (type(queue) is not str or not _TOPIC(queue)):
            raise ValueError(f"invalid kafka queue (group) name {queue!r}")
        settings = self.settings
        if options:
            fields = set(options) - _OPTION_NAMES
            if fields:
                raise TypeError(f"unknown kafka subscribe option(s): {', '.join(sorted(fields))}")
            settings = KafkaOptions(**{**_as_dict(settings), **options})
        try:
            await self._ensure_topic(topic)
        except AioKafkaError as exc:
            raise SubscribeError(f"kafka topic {topic!r} could not be created: {exc}") from exc
        sub = KafkaSubscriber(self, topic, handler, queue, auto_ack, settings)
        try:
            await sub._start()
        except AioKafkaError as exc:
            raise SubscribeError(f"kafka subscription to {topic!r} failed: {exc}") from exc
        self._subscribers.add(sub)
        return sub


async def _tls_problem(s: KafkaOptions) -> str | None:
    """What a TLS handshake with the first bootstrap server says when it fails, else ``None``.

    ``None`` also when the server cannot be reached at all: not a TLS matter.
    """
    host, _, port = s.bootstrap_servers[0].rpartition(":")
    host = host.strip("[]")
    wait = min(s.request_timeout, _TLS_PROBE_TIMEOUT)
    try:
        _, plain = await asyncio.wait_for(asyncio.open_connection(host, int(port)), wait)
    except (OSError, TimeoutError, ValueError):
        return None
    plain.close()
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(host, int(port), ssl=s.tls, server_hostname=host), wait
        )
    except ssl.SSLCertVerificationError as exc:
        refused = exc.verify_message
        return f"the TLS handshake failed: the server's certificate was refused: {refused}"
    except TimeoutError:
        return f"the server did not answer a TLS handshake within {wait:g}s"
    except (ssl.SSLError, OSError) as exc:
        return f"the TLS handshake failed ({type(exc).__name__}: {exc})"
    writer.close()
    return None


def _connect_failure(s: KafkaOptions, exc: Exception, handshake: str | None = None) -> str:
    """Why ``connect()`` failed, with what to check for the options in use."""
    where = ",".join(s.bootstrap_servers)
    if handshake is not None:
        cause = handshake
    elif isinstance(exc, AioKafkaError | OSError):
        cause = str(exc)
    elif s.sasl_mechanism is not None:
        # A SCRAM exchange the server ends with an error instead of its proof.
        cause = f"authentication failed (aiokafka: {type(exc).__name__}: {exc})"
    else:
        cause = f"{type(exc).__name__}: {exc}"
    if s.sasl_mechanism is not None:
        over = " over TLS" if s.tls is not None else ""
        return (
            f"cannot connect to kafka at {where}{over} with SASL {s.sasl_mechanism} as user "
            f"{s.sasl_username!r}: {cause}; check sasl_username and sasl_password, and that "
            f"the server offers {s.sasl_mechanism}{over} on this port"
        )
    if s.tls is not None:
        return (
            f"cannot connect to kafka at {where} over TLS: {cause}; is the server running, "
            "does it speak TLS on this port, and does the tls context trust its certificate?"
        )
    return (
        f"cannot connect to kafka at {where}: {cause}; is the server running, is the "
        "address host:port right, and does the server require TLS or SASL?"
    )


async def _flush(batcher: Batcher, producer: AIOKafkaProducer) -> None:
    await batcher.flush()
    await producer.flush()


def _as_dict(settings: KafkaOptions) -> dict[str, Any]:
    return {name: getattr(settings, name) for name in _OPTION_NAMES}


def new_group_name() -> str:
    """A group name no other subscription uses (for a private group of one's own)."""
    return f"microbroker-{uuid.uuid4().hex}"
