"""Records appended straight to aiokafka's batches: one future per batch, not one per record.

``AIOKafkaProducer.send()`` costs about ten microseconds of Python per record
on top of encoding it: two coroutines, a metadata wait, a ``TopicPartition``,
a future, a partitioner call over freshly built partition lists, and on
delivery a ``RecordMetadata`` and a ``set_result`` per record. :class:`Batcher`
appends a record to the open batch of its partition (aiokafka's own
``BatchBuilder``, the C record builder underneath) and submits each batch once,
through ``send_batch``, the producer's public batch API. aiokafka lingers,
sends, retries and flushes those batches exactly as it does its own, so
``linger``, ``batch_size``, ``acks`` and ``flush()`` keep their meaning.

A publish that awaits confirmation awaits its batch: the batch is stored or
failed as a whole. A failed batch nobody awaits is logged with its record
count, never dropped in silence.

Partitions are chosen as aiokafka chooses them (its partitioner: the murmur2
hash of the key, or a random available partition without one), from lists
rebuilt only when the producer's metadata changes.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]
from aiokafka.errors import (  # type: ignore[import-untyped]
    KafkaError,
    MessageSizeTooLargeError,
)
from aiokafka.partitioner import DefaultPartitioner  # type: ignore[import-untyped]
from aiokafka.record.default_records import (  # type: ignore[import-untyped]
    DefaultRecordBatchBuilder,
)

from .options import KafkaOptions

logger = logging.getLogger("microbroker.broker.kafka")

Headers = list[tuple[str, bytes]] | None


class _Batch:
    """One batch being filled: its builder, and what its records' publishers await."""

    __slots__ = ("builder", "done", "partition", "records", "submission", "topic")

    def __init__(self, builder: Any, topic: str, partition: int, loop: asyncio.AbstractEventLoop):
        self.builder = builder
        self.topic = topic
        self.partition = partition
        #: Resolved when the server has the batch; failed with the batch's error.
        self.done: asyncio.Future[None] = loop.create_future()
        self.records = 0
        #: The task handing the batch to aiokafka's accumulator.
        self.submission: asyncio.Future[None] | None = None


class Batcher:
    """Appends records to per-partition batches of ``producer`` and submits each batch once.

    ``settings`` are those ``producer`` was made with. Without ``confirm``,
    publishers do not await their batch, so a failed batch is logged here
    (nobody else would see its error).
    """

    def __init__(self, producer: AIOKafkaProducer, settings: KafkaOptions) -> None:
        self._producer = producer
        self._cluster = producer.client.cluster
        self._partitioner = producer._partitioner
        self._keyless_random = type(self._partitioner) is DefaultPartitioner
        self._max_request_size = settings.max_request_size
        # A batch refuses a record that would take it past batch_size unless it is
        # the batch's first; so with batch_size below the request limit, only a
        # batch's first record can exceed that limit, and only it is measured.
        self._measure_all = settings.batch_size + 1024 >= self._max_request_size
        # aiokafka 0.14 lingers per batch and its send() wakes the sender when a batch
        # fills (``waiter()``); before 0.14 the sender polls, and nothing needs waking.
        self._sender_waiter = getattr(producer._message_accumulator, "waiter", None)
        self._confirm = settings.confirm
        self._servers = ",".join(settings.bootstrap_servers)
        self._open: dict[tuple[str, int], _Batch] = {}
        self._unfinished: set[_Batch] = set()
        self._partitions: dict[str, tuple[list[int], list[int], list[int]]] = {}
        self._cluster.add_listener(self._metadata_changed)

    def close(self) -> None:
        """Stop following the producer's metadata (the producer is being stopped)."""
        self._cluster.remove_listener(self._metadata_changed)

    async def flush(self) -> None:
        """Wait until every batch begun so far is stored or failed."""
        while self._unfinished:
            await asyncio.wait([batch.done for batch in self._unfinished])

    def _metadata_changed(self, cluster: Any) -> None:
        self._partitions.clear()

    def _partition_for(self, topic: str, partition: int | None, key: bytes | None) -> int | None:
        """Where the record goes; ``None`` if ``topic`` or ``partition`` is not in the metadata."""
        known = self._partitions.get(topic)
        if known is None:
            every = self._cluster.partitions_for_topic(topic)
            if not every:
                return None
            ordered = sorted(every)  # as the partitioner expects them
            available = list(self._cluster.available_partitions_for_topic(topic) or ())
            # A record without a key goes to a random available partition (any, if none is).
            known = self._partitions[topic] = (ordered, available, available or ordered)
        if partition is not None:
            return partition if partition in known[0] else None
        if key is None and self._keyless_random:
            # What DefaultPartitioner does for a record without a key, without the call.
            choices = known[2]
            return choices[0] if len(choices) == 1 else random.choice(choices)
        return int(self._partitioner(key, known[0], known[1]))

    def append(
        self, topic: str, partition: int | None, key: bytes | None, value: bytes, headers: Headers
    ) -> asyncio.Future[None] | None:
        """Add a record to its partition's open batch, without waiting: the batch's future.

        ``None``: there is no open batch with room (or the topic or partition is not in
        the producer's metadata yet); :meth:`open` then takes the record.
        """
        partition = self._partition_for(topic, partition, key)
        if partition is None:
            return None
        batch = self._open.get((topic, partition))
        if batch is None or not self._add(batch, key, value, headers):
            return None
        return batch.done

    async def open(
        self, topic: str, partition: int | None, key: bytes | None, value: bytes, headers: Headers
    ) -> asyncio.Future[None] | None:
        """Add a record, opening a batch for it if need be (waiting for room as ``send()`` does).

        ``None``: the topic or partition is not in the producer's metadata (yet); the
        caller sends the record the long way, with ``send()``, which waits for it.
        """
        partition = self._partition_for(topic, partition, key)
        if partition is None:
            return None
        batch = self._open.get((topic, partition))
        if batch is not None and self._add(batch, key, value, headers):
            return batch.done
        return await self._new_batch(topic, partition, key, value, headers)

    def _add(self, batch: _Batch, key: bytes | None, value: bytes, headers: Headers) -> bool:
        """Append to ``batch``; False if it is full (or already taken by the sender)."""
        if self._measure_all:
            self._check_size(key, value, headers)
        if batch.builder.append(timestamp=None, key=key, value=value, headers=headers) is None:
            # Full: the builder closed itself. Wake aiokafka's sender, as its own
            # send() does when a batch fills, rather than leave it to the linger timer.
            if self._sender_waiter is not None:
                waiter = self._sender_waiter()
                if not waiter.done():
                    waiter.set_result(None)
            return False
        batch.records += 1
        return True

    def _check_size(self, key: bytes | None, value: bytes, headers: Headers) -> None:
        size = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers or [])
        if size > self._max_request_size:
            raise MessageSizeTooLargeError(
                f"the record is {size} bytes, over the producer's max_request_size of "
                f"{self._max_request_size}"
            )

    async def _new_batch(
        self, topic: str, partition: int, key: bytes | None, value: bytes, headers: Headers
    ) -> asyncio.Future[None]:
        self._check_size(key, value, headers)
        where = (topic, partition)
        previous = self._open.get(where)
        batch = _Batch(self._producer.create_batch(), topic, partition, asyncio.get_running_loop())
        batch.builder.append(timestamp=None, key=key, value=value, headers=headers)
        batch.records = 1
        self._unfinished.add(batch)
        # Publishers to this partition append to it from now on, while it waits for the
        # partition's previous batch to be submitted and taken by the sender. It is
        # submitted by a task of its own: a publisher cancelled meanwhile takes no
        # other publisher's records with it.
        self._open[where] = batch
        batch.submission = asyncio.ensure_future(
            self._submit(batch, previous.submission if previous is not None else None)
        )
        batch.submission.add_done_callback(_retrieved)
        # The publisher that opened it waits for room, as send() makes it wait.
        await asyncio.shield(batch.submission)
        return batch.done

    async def _submit(self, batch: _Batch, previous: asyncio.Future[None] | None) -> None:
        if previous is not None and not previous.done():
            # One submission at a time per partition keeps the batches in order.
            await asyncio.wait([previous])
        try:
            sent = await self._producer.send_batch(
                batch.builder, batch.topic, partition=batch.partition
            )
        except BaseException as exc:
            where = (batch.topic, batch.partition)
            if self._open.get(where) is batch:
                del self._open[where]
            batch.builder.close()
            self._settle(batch, exc)
            raise
        sent.add_done_callback(lambda future: self._finished(batch, future))

    def _finished(self, batch: _Batch, sent: asyncio.Future[Any]) -> None:
        where = (batch.topic, batch.partition)
        if self._open.get(where) is batch:
            del self._open[where]
        if sent.cancelled():
            self._settle(batch, asyncio.CancelledError())
        else:
            self._settle(batch, sent.exception())

    def _settle(self, batch: _Batch, exc: BaseException | None) -> None:
        done = batch.done
        if done.done():
            return
        self._unfinished.discard(batch)
        if exc is None:
            done.set_result(None)
            return
        if isinstance(exc, asyncio.CancelledError):
            # Only a stopping producer or loop cancels a submission: its records are lost.
            exc = KafkaError("the batch was cancelled before the producer sent it")
        done.set_exception(exc)
        done.exception()  # retrieved here: its publishers may not be awaiting it
        if not self._confirm:
            logger.error(
                "kafka: %d record(s) published to %s partition %d were not stored by %s: %s "
                "(publish with confirm=True to see such errors at publish)",
                batch.records,
                batch.topic,
                batch.partition,
                self._servers,
                str(exc) or type(exc).__name__,
            )


def _retrieved(task: asyncio.Future[None]) -> None:
    """Mark a submission's error as seen: its batch's publishers are told through the batch."""
    if not task.cancelled():
        task.exception()
