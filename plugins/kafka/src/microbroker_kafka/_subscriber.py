"""A subscription: its consumer, the group's rebalance listener, the fetch loop and redeliveries.

A subscription with a ``queue`` is a member of the Kafka consumer group named
after the queue: each partition belongs to one member. One without a queue
reads every partition of its topic by itself (manual assignment, no group)
and reads a partition added to the topic later from its beginning.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from aiokafka import (  # type: ignore[import-untyped]
    AIOKafkaConsumer,
    ConsumerRebalanceListener,
    TopicPartition,
)
from aiokafka.coordinator.assignors.range import (  # type: ignore[import-untyped]
    RangePartitionAssignor,
)
from aiokafka.errors import KafkaError as AioKafkaError  # type: ignore[import-untyped]

from microbroker import Message
from microbroker.transport import Handler, Subscriber, decode_envelope

from ._delivery import KafkaDelivery
from ._offsets import Partition, commit_within, committed
from .errors import SubscribeError
from .options import KafkaOptions

if TYPE_CHECKING:
    import ssl

    from .broker import KafkaBroker

logger = logging.getLogger("microbroker.broker.kafka")

_PARTITION_CHECK = 0.25
"""Seconds between looks at the cached metadata for new partitions (broadcast subscribers)."""


class GroupAssignor(RangePartitionAssignor):  # type: ignore[misc]
    """Kafka's range assignment (the Java client's default too), and a warning when it starves.

    The group's leader assigns the partitions, once per rebalance: a group with
    more members on a topic than the topic has partitions leaves the rest
    without messages, which Kafka does without a word. The leader says so
    here, naming both numbers. It keeps the protocol name ``range``, so it
    shares a group with other clients' range assignors.
    """

    name = "range"
    group: ClassVar[str] = ""

    @classmethod
    def for_group(cls, group: str) -> type[GroupAssignor]:
        """The assignor of ``group`` (aiokafka takes classes, so the group is a class attribute)."""
        return type(cls.__name__, (cls,), {"group": group})

    @classmethod
    def assign(cls, cluster: Any, members: Mapping[str, Any]) -> Any:
        assignment = super().assign(cluster, members)
        subscribed = Counter(topic for member in members.values() for topic in member.subscription)
        for topic, count in sorted(subscribed.items()):
            partitions = cluster.partitions_for_topic(topic)
            if partitions is not None and count > len(partitions):
                logger.warning(
                    "kafka: queue group %r has %d members on topic %r, which has %d "
                    "partition(s): %d member(s) get no messages; give the topic at least %d "
                    "partitions (option partitions, MICRO_KAFKA_PARTITIONS, for the topics the "
                    "broker creates) or run at most %d members",
                    cls.group,
                    count,
                    topic,
                    len(partitions),
                    count - len(partitions),
                    count,
                    len(partitions),
                )
        return assignment


class KafkaSubscriber(Subscriber):
    """A subscription: a consumer of its own, in the queue's group or reading every partition."""

    def __init__(
        self,
        broker: KafkaBroker,
        topic: str,
        deliver: Handler,
        queue: str | None,
        auto_ack: bool,
        settings: KafkaOptions,
        tls: ssl.SSLContext | None,
    ) -> None:
        super().__init__(topic, queue, auto_ack)
        self._broker = broker
        #: The handler under the core's contract (hooks, auto_ack, retry policy, giving up).
        self._deliver = deliver
        self._settings = settings
        self._tls = tls
        self._consumer: AIOKafkaConsumer | None = None
        self._partitions: dict[TopicPartition, Partition] = {}
        # The last record handed from each partition revoked from this subscriber (the
        # client's object), kept to check the server's log against when it comes back.
        self._witnesses: dict[TopicPartition, Any] = {}
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

    async def start(self) -> None:
        """Start consuming; return once every record published from now on will be delivered.

        A group member returns once the group assigned it its partitions and
        their starting offsets are fixed (committed, for a new group); one
        without a queue once it knows where each partition's log ends.
        """
        s = self._settings
        kwargs = s.consumer_kwargs(self._tls)
        if self.queue is not None:
            kwargs.update(
                group_id=self.queue,
                rebalance_timeout_ms=int(s.rebalance_timeout * 1000),
                # A JoinGroup is answered only when the group has settled, up to
                # rebalance_timeout later: the Java client waits that plus 5 s for it.
                request_timeout_ms=max(
                    kwargs["request_timeout_ms"], int((s.rebalance_timeout + 5.0) * 1000)
                ),
                partition_assignment_strategy=(GroupAssignor.for_group(self.queue),),
            )
        consumer: Any
        if s.client == "confluent":
            from ._confluent import ConfluentConsumer  # the extra: imported only when chosen

            consumer = ConfluentConsumer(s, self.queue, self.topic)
        else:
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
                            self._partitions[tp] = Partition(await consumer.position(tp))
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
        # A position beyond the end of the log (the server lost records) is decided at
        # the first fetch, by its high watermark (_check_log_ends), not here: tansu
        # answers ListOffsets with the base offset of the log's last batch + 1, short
        # of its end. Where "latest" goes on from is fixed here, though: what is
        # published from now on is delivered.
        try:
            ends = await consumer.end_offsets(tps) if tps else {}
        except AioKafkaError as exc:
            logger.info("kafka: could not read the log ends of %s: %s", self.topic, exc)
            ends = {}
        fresh: dict[TopicPartition, int] = {}
        for tp in tps:
            position = positions[tp]
            part = self._partitions[tp] = Partition(position)
            end = ends.get(tp)
            if end is not None and position > end:
                part.reset_to = end
            witness = self._witnesses.pop(tp, None)
            if witness is not None:
                self._place_witness(consumer, tp, part, witness)
            if await committed(consumer, tp) is None:
                fresh[tp] = position
        if fresh:
            # The group's starting point is fixed now, not at the next fetch: what is
            # published from here on is delivered, whichever member reads it later.
            # (The group's coordination waits for this callback: the commit is bounded.)
            await commit_within(consumer, fresh, "commit of the starting offsets")
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

    def _place_witness(
        self, consumer: AIOKafkaConsumer, tp: TopicPartition, part: Partition, witness: Any
    ) -> None:
        """Check, at the first fetch, that the server holds ``witness`` where it was read.

        A server that lost its log (one without durable storage, restarted) and
        took new records since holds others at the same offsets: a group that
        goes on from its committed offset would skip every record the new log
        holds before it. When the group goes on right after the witness, the
        witness is read again to be compared, not handed to the handler.
        """
        offset = _offset_of(witness)
        if part.next == offset + 1:
            consumer.seek(tp, offset)  # read again, to be compared only
            part.check = witness
        elif 0 < part.next <= offset:
            # Compared when it comes, handed as the others are. From offset 0 (a group
            # the server does not know, reading from the beginning) nothing is skipped.
            part.check = witness

    async def _check_witness(
        self, consumer: AIOKafkaConsumer, tp: TopicPartition, part: Partition, records: list[Any]
    ) -> list[Any]:
        """The ``records`` to hand, once the one at the offset of ``part.check`` is compared.

        The same record: the log is the one read before; go on. Another: the
        server's log was replaced, and the partition goes on per
        ``offset_reset`` (nothing of this batch is handed).
        """
        witness = part.check
        wanted = _offset_of(witness)
        for index, record in enumerate(records):
            offset = _offset_of(record)
            if offset < wanted:
                continue
            part.check = None
            if offset > wanted:
                return records  # deleted or compacted away: nothing to compare
            if _identity(record) == _identity(witness):
                # Handed before and read again only to be compared (next lies past it),
                # or to be handed again as the records before it (next does not).
                return records[index + 1 :] if part.next > wanted else records
            await self._start_over(
                consumer,
                {
                    tp: f"the record at offset {wanted} is not the one read there before "
                    "(the server's log was replaced: did it lose its records?)"
                },
            )
            return []
        return records

    async def _on_revoked(self, tps: Iterable[TopicPartition]) -> None:
        tps = list(tps)
        self._unplaced.difference_update(tps)
        revoked = [tp for tp in tps if tp in self._partitions]
        for tp in revoked:
            self._partitions[tp].revoked = True
        # Let the message being handled finish, so that its ack can be committed.
        await self._wait_idle()
        offsets = {}
        for tp in revoked:
            part = self._partitions.pop(tp)
            witness = part.witness if part.witness is not None else part.check
            if witness is not None:
                self._witnesses[tp] = witness
            if part.safe > part.committed:
                offsets[tp] = part.safe
        if offsets and self._consumer is not None:
            await commit_within(self._consumer, offsets, "commit on revoke", logging.WARNING)

    async def _wait_idle(self) -> None:
        """Wait, up to ``drain_timeout``, for the batch or redelivery being handled.

        At once when called from that handler itself (it would wait for itself).
        """
        current = asyncio.current_task()
        if current is self._task or current in self._redeliveries:
            return
        if self._busy.locked():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._settings.drain_timeout):
                    async with self._busy:
                        pass

    # Delivering. ----------------------------------------------------------------

    async def _run(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        topic, queue = self.topic, self.queue
        partitions = self._partitions
        busy = self._busy
        max_records = self._settings.max_poll_records
        # librdkafka's messages answer by methods; aiokafka's records by attributes.
        read: ReadRecord = _read_message if getattr(consumer, "messages", False) else _read_record
        hand = self._hand
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
                if part is not None:
                    if part.check is not None:
                        batches[tp] = await self._check_witness(consumer, tp, part, batches[tp])
                elif queue is not None:
                    first = _offset_of(batches[tp][0])
                    if tp in self._unplaced:
                        # Its position came after the assignment callback gave up on it.
                        self._unplaced.discard(tp)
                        owners[tp] = partitions[tp] = Partition(first)
                        continue
                    # Assigned, but the assignment callback has not registered it yet:
                    # fetched again from here once it has (it starts where this batch did).
                    with contextlib.suppress(AioKafkaError, AssertionError):
                        consumer.seek(tp, first)
            # One batch at a time holds the lock: redeliveries and revokes wait for its end.
            async with busy:
                for tp, records in batches.items():
                    part = owners[tp]
                    if part is not None and records:
                        await hand(records, part, tp.partition, read)

    async def _hand(
        self, records: list[Any], part: Partition, partition: int, read: ReadRecord
    ) -> None:
        """Deliver the ``records`` of one partition, in order, one at a time.

        ``read`` gives a record's offset, value, headers and key: aiokafka's records
        answer by attributes, librdkafka's messages by methods, read here, on the
        loop, as they are delivered (no copy of each is made in the consumer's thread,
        which would hold the GIL against the loop for it).
        """
        topic, queue, deliver = self.topic, self.queue, self._deliver
        envelope = self._settings.envelope
        pending = part.pending
        for record in records:
            if part.revoked or self._closing:
                # Left for the partition's next owner: it restarts a (re)assigned
                # partition from its committed offset.
                return
            offset, value, headers, key = read(record)
            part.next = offset + 1
            value = value or b""
            if envelope:
                message: Message | None = _unwrap(value)
                raw = None
            else:
                message = None
                raw = headers
            delivery = KafkaDelivery(
                topic,
                value if message is None else message.body,
                raw,
                message,
                queue,
                1,
                self,
                part,
                partition,
                offset,
                key,
            )
            pending.append(delivery)
            await deliver(delivery)
        part.witness = records[-1]
        part.advance()  # the batch's settled run is dropped: only the unsettled are kept

    def redeliver(self, delivery: KafkaDelivery, delay: float) -> None:
        """Deliver ``delivery`` again after ``delay`` seconds, while the partition goes on.

        Its offset stays outstanding meanwhile, so no commit passes it until it
        is acked or given up.
        """
        task = asyncio.create_task(self._redeliver_later(delivery, delay))
        self._redeliveries.add(task)
        task.add_done_callback(self._redeliveries.discard)

    async def _redeliver_later(self, delivery: KafkaDelivery, delay: float) -> None:
        if delay > 0:
            await asyncio.sleep(delay)
        if delivery._tracker.revoked or self._closing:
            return  # the partition's next owner reads it again from the committed offset
        again = delivery.redelivery()
        async with self._busy:
            # A nack of this one schedules the next redelivery by itself.
            await self._deliver(again)

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
        if beyond:
            await self._start_over(
                consumer,
                {
                    tp: f"the server's log ends before offset {partitions[tp].next} "
                    "(it lost records?)"
                    for tp in beyond
                },
            )

    async def _start_over(
        self, consumer: AIOKafkaConsumer, reasons: dict[TopicPartition, str]
    ) -> None:
        """Go on per ``offset_reset`` on partitions whose log lost what this subscriber read.

        ``reasons``: why, per partition, for the warning. Their redeliveries stop
        (those records are gone), and a group commits the new positions.
        """
        partitions = self._partitions
        async with self._busy:
            try:
                moved = await self._go_on_from_reset(consumer, reasons)
            except AioKafkaError as exc:
                logger.info("kafka: could not reset %s: %s", self.topic, exc)
                return
            for tp, offset in moved.items():
                old = partitions.get(tp)
                if old is None or old.revoked:
                    continue
                old.revoked = True  # its redeliveries stop: those offsets are gone
                partitions[tp] = Partition(offset)
        if self.queue is not None and moved:
            # Replace the group's committed offset, which points past the end as well.
            await commit_within(consumer, moved, "commit after a reset (deferred)")

    async def _go_on_from_reset(
        self, consumer: AIOKafkaConsumer, reasons: dict[TopicPartition, str]
    ) -> dict[TopicPartition, int]:
        """Seek partitions whose log no longer holds what this subscriber read.

        Kafka answers a fetch past the end of a partition with
        OFFSET_OUT_OF_RANGE, and the consumer goes on per ``offset_reset``.
        Some Kafka-compatible servers (tansu) answer it with no records, so a
        subscriber whose server lost its log (a restart without durable
        storage) would wait, silently, until the new log grew past its old
        position, and skip every record before it. Returns the new positions.
        """
        reset = self._settings.offset_reset
        tps = list(reasons)
        if reset == "earliest":
            starts = await consumer.beginning_offsets(tps)
        else:
            starts = await consumer.end_offsets(tps)
            for tp in tps:
                part = self._partitions.get(tp)
                if part is not None and part.reset_to is not None:
                    starts[tp] = min(starts[tp], part.reset_to)
        for tp in tps:
            consumer.seek(tp, starts[tp])
            logger.warning(
                "kafka: %s partition %d: %s: going on from offset %d (offset_reset=%r)",
                tp.topic,
                tp.partition,
                reasons[tp],
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
            partitions[tp] = Partition(0)
        logger.info(
            "kafka: %s grew to %d partitions; reading %s from offset 0",
            topic,
            len(seen),
            ", ".join(str(tp.partition) for tp in fresh),
        )

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
        offsets = {tp: p.safe for tp, p in self._partitions.items() if p.dirty}
        if not offsets:
            return
        # Failing during a rebalance: the revoke callback commits what is settled.
        if not await commit_within(consumer, offsets, "commit (deferred)"):
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
        await self._wait_idle()
        tasks = [t for t in (self._task, self._committer, *self._redeliveries) if t is not None]
        current = asyncio.current_task()
        tasks = [t for t in tasks if t is not current]  # unsubscribe() from its own handler
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


#: A record's offset, value, headers and key.
ReadRecord = Callable[[Any], tuple[int, bytes | None, Any, bytes | None]]


def _read_record(record: Any) -> tuple[int, bytes | None, Any, bytes | None]:
    """aiokafka's ``ConsumerRecord``."""
    return record.offset, record.value, record.headers, record.key


def _read_message(message: Any) -> tuple[int, bytes | None, Any, bytes | None]:
    """librdkafka's ``Message``."""
    return message.offset(), message.value(), message.headers(), message.key()


def _offset_of(record: Any) -> int:
    """The offset of an aiokafka record (an attribute) or a librdkafka message (a method)."""
    offset = record.offset
    return int(offset() if callable(offset) else offset)


def _identity(record: Any) -> tuple[Any, ...]:
    """What tells one record from another at the same offset: timestamp, key, value, headers."""
    if callable(record.offset):
        return record.timestamp(), record.key(), record.value(), record.headers()
    return record.timestamp, record.key, record.value, record.headers


def _unwrap(value: bytes) -> Message:
    """A record value in go-micro's envelope as its message; any other value as it is."""
    try:
        headers, body = decode_envelope(value)
    except ValueError:
        return Message(value, {})
    return Message(body, headers)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, sub: KafkaSubscriber) -> None:
        self._sub = sub

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self._sub._on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self._sub._on_assigned(assigned)
