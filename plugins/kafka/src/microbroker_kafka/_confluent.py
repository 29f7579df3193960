"""The confluent-kafka (librdkafka) client adapter: the calls the broker makes, off the loop.

The broker's logic (offsets, commits, rebalances, settlement: ``_subscriber``,
``_offsets``, ``_delivery``) is the same for both clients; it talks to an
aiokafka consumer, and here to :class:`ConfluentConsumer`, which answers the
same calls over a ``confluent_kafka.Consumer``. Errors come out as aiokafka's
``KafkaError``, so that the shared code handles them in one way.

No librdkafka call that may wait runs on the event loop:

- a consumer's ``consume()`` (and the rebalance callbacks librdkafka runs
  inside it, and ``close()``) runs in a thread of its own; a callback runs the
  subscription's (async) rebalance handling on the loop and waits for it, as
  aiokafka's coordinator waits for its listener;
- lookups (committed offsets, watermarks, metadata) and commits run in the
  loop's default executor;
- the producer's ``produce()`` only appends to librdkafka's queue. Without
  ``confirm`` only failed records have a delivery report for Python, and the
  loop serves them with ``poll(0)``, which never waits; with ``confirm`` a
  thread of the producer's own polls for the reports and hands each polled
  batch of them to the loop with one ``call_soon_threadsafe``.

Without ``confirm`` no Python runs per stored record outside the loop (the
producer's reports of stored records stop in C), and consumed records cross
from the consumer's thread in one batch per ``consume()``, read on the loop as
they are delivered (no copy of each made in that thread).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from typing import Any, cast

import confluent_kafka
from aiokafka import TopicPartition  # type: ignore[import-untyped]
from aiokafka.errors import KafkaError as AioKafkaError  # type: ignore[import-untyped]
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from .errors import KafkaConnectError
from .options import KafkaOptions

logger = logging.getLogger("microbroker.broker.kafka")

_LOOKUP_TIMEOUT = 10.0
"""Seconds one blocking lookup may take in its executor thread (its caller bounds its wait)."""
_CONSUME_WAIT = 0.05
"""Seconds one ``consume()`` waits for records in the consumer's thread."""
_POLL_WAIT = 0.05
"""Seconds the producer's thread (``confirm=True``) waits in ``poll()`` for delivery reports."""
_POLL_EVERY = 1000
"""Records produced with ``confirm=False`` between two ``poll(0)`` on the loop."""
_POLL_INTERVAL = 0.01
"""Seconds between two ``poll(0)`` on the loop while ``confirm=False`` records are unserved."""
_OFFSET_INVALID = confluent_kafka.OFFSET_INVALID
_IGNORED = {confluent_kafka.KafkaError._PARTITION_EOF}


class KafkaClientError(AioKafkaError):  # type: ignore[misc]
    """A librdkafka error, as the aiokafka error the shared code expects."""


def _error(exc: BaseException) -> AioKafkaError:
    return KafkaClientError(str(exc))


class ConfluentConsumer:
    """A ``confluent_kafka.Consumer`` behind the calls the subscription makes of aiokafka's.

    One consumer reads one ``topic`` (a subscription's). :meth:`getmany` hands
    out librdkafka's own ``Message`` objects, not aiokafka-like records: the
    subscription reads them by their methods (``offset()``, ``value()``...).
    """

    #: getmany() hands out confluent_kafka.Message objects (read by methods).
    messages = True

    def __init__(self, settings: KafkaOptions, group: str | None, topic: str) -> None:
        self._settings = settings
        self._topic = topic
        self._config = settings.librdkafka_consumer(group)
        self._group = group
        self._consumer: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # One thread for consume(), the callbacks inside it and close().
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="rdkafka")
        self._listener: Any = None
        self._assignment: set[TopicPartition] = set()
        self._manual = False
        self._reassign = False
        #: Positions decided on the loop, applied in the consumer's thread before it reads on.
        self._positions: dict[TopicPartition, int] = {}
        self._seeks: dict[TopicPartition, int] = {}
        self._topics: dict[str, set[int]] = {}
        self._metadata_at = 0.0
        self._refreshing: asyncio.Future[None] | None = None
        self._closing = False
        self._in_callback = False

    # Starting and stopping. ------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            self._consumer = confluent_kafka.Consumer({**self._config, "error_cb": self._on_error})
        except (confluent_kafka.KafkaException, ValueError) as exc:
            raise _error(exc) from exc

    def subscribe(self, topics: list[str], listener: Any) -> None:
        self._listener = listener
        self._consumer.subscribe(
            topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )

    async def stop(self) -> None:
        consumer, self._consumer = self._consumer, None
        self._closing = True
        if consumer is None:
            return
        loop = asyncio.get_running_loop()
        try:
            # After the consume() running now: the consumer's calls stay in its thread.
            await loop.run_in_executor(self._thread, consumer.close)
        finally:
            self._thread.shutdown(wait=False)

    def _on_error(self, error: Any) -> None:
        logger.debug("kafka (librdkafka): %s", error)

    # The group's rebalance callbacks, in the consumer's thread (inside consume()). -------

    def _run_listener(self, call: Callable[[list[TopicPartition]], Any], tps: list[Any]) -> None:
        loop = self._loop
        if loop is None or self._closing or loop.is_closed():
            return
        future = asyncio.run_coroutine_threadsafe(call(tps), loop)
        try:
            future.result(self._settings.rebalance_timeout + self._settings.request_timeout)
        except Exception as exc:
            future.cancel()
            logger.warning("kafka: rebalance handling of %s failed: %r", tps, exc)

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        tps = [TopicPartition(p.topic, p.partition) for p in partitions]
        self._assignment = set(tps)
        self._positions.clear()
        # From the committed offsets (or the reset), as librdkafka finds them. The group's
        # committed offsets cannot be looked up while this callback runs (librdkafka holds
        # an OffsetFetch back until the assignment is made), so the subscription's handling
        # runs after it, on the loop, not awaited here: records fetched before it placed a
        # partition are fetched again from there (the subscription seeks back to them).
        consumer.assign(partitions)
        loop = self._loop
        if self._listener is not None and loop is not None and not self._closing:
            future = asyncio.run_coroutine_threadsafe(
                self._listener.on_partitions_assigned(tps), loop
            )
            future.add_done_callback(_logged)

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        tps = [TopicPartition(p.topic, p.partition) for p in partitions]
        if self._listener is not None:
            self._in_callback = True
            try:
                self._run_listener(self._listener.on_partitions_revoked, tps)
            finally:
                self._in_callback = False
        self._assignment.difference_update(tps)
        self._positions.clear()
        for tp in tps:
            self._seeks.pop(tp, None)
        with contextlib.suppress(confluent_kafka.KafkaException, RuntimeError):
            consumer.unassign()

    def _on_lost(self, consumer: Any, partitions: list[Any]) -> None:
        # Evicted (the session expired): another member may own them already, so nothing
        # is committed for them; revoked all the same, so that redeliveries stop.
        self._on_revoke(consumer, partitions)

    # Reading. ------------------------------------------------------------------------

    def assign(self, tps: Iterable[TopicPartition]) -> None:
        """A manual assignment, made in the consumer's thread before it reads on."""
        self._manual = True
        self._assignment = set(tps)
        self._reassign = True

    def assignment(self) -> set[TopicPartition]:
        return set(self._assignment)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self._seeks[tp] = offset

    async def seek_to_end(self, *tps: TopicPartition) -> None:
        ends = await self.end_offsets(list(tps))
        self._seeks.update(ends)

    async def position(self, tp: TopicPartition) -> int:
        """Where the partition is read from: the seek made, the committed offset, or the reset."""
        known = self._seeks.get(tp, self._positions.get(tp))
        if known is not None:
            return known
        offset = await self.committed(tp) if self._group is not None else None
        if offset is None:
            low, high = await self._watermarks(tp)
            offset = low if self._settings.offset_reset == "earliest" else high
        self._positions[tp] = offset
        return offset

    def _consume(self, max_records: int, wait: float) -> dict[TopicPartition, list[Any]]:
        consumer = self._consumer
        if consumer is None:
            return {}
        if self._reassign:
            self._reassign = False
            seeks, self._seeks = self._seeks, {}
            consumer.assign(
                [
                    confluent_kafka.TopicPartition(tp.topic, tp.partition, seeks.get(tp, -1000))
                    for tp in self._assignment
                ]
            )
        elif self._seeks:
            seeks, self._seeks = self._seeks, {}
            for tp, offset in seeks.items():
                if tp in self._assignment:
                    try:
                        consumer.seek(
                            confluent_kafka.TopicPartition(tp.topic, tp.partition, offset)
                        )
                    except confluent_kafka.KafkaException as exc:
                        logger.info("kafka: seek of %s to %d failed: %s", tp, offset, exc)
        messages = consumer.consume(max_records, 0)
        if not messages:
            # consume() with a timeout waits until it has max_records or the time is up:
            # wait for the first record alone, then take what else has arrived with it.
            messages = consumer.consume(1, wait)
            if not messages:
                return {}
            if max_records > 1:
                messages += consumer.consume(max_records - 1, 0)
        by_partition: dict[int, list[Any]] = {}
        for message in messages:
            error = message.error()
            if error is not None:
                if error.code() not in _IGNORED:
                    logger.info("kafka (librdkafka): consume: %s", error)
                continue
            partition = message.partition()
            records = by_partition.get(partition)
            if records is None:
                records = by_partition[partition] = []
            records.append(message)
        topic = self._topic
        return {TopicPartition(topic, p): records for p, records in by_partition.items()}

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Any]]:
        """The records there are (librdkafka's messages), per partition, in one hand-off.

        The records the consumer's thread finds are handed to the loop at once, as one
        batch, however few: the wait in the thread is for the first one only.
        """
        loop = asyncio.get_running_loop()
        wait = min(timeout_ms / 1000, _CONSUME_WAIT)
        try:
            return await loop.run_in_executor(self._thread, self._consume, max_records, wait)
        except (confluent_kafka.KafkaException, RuntimeError) as exc:
            raise _error(exc) from exc

    def highwater(self, tp: TopicPartition) -> int | None:
        consumer = self._consumer
        if consumer is None:
            return None
        try:
            _, high = consumer.get_watermark_offsets(
                confluent_kafka.TopicPartition(tp.topic, tp.partition), cached=True
            )
        except (confluent_kafka.KafkaException, RuntimeError):
            return None
        return None if high < 0 else int(high)

    # Lookups and commits, in the default executor. ------------------------------------

    def _live(self) -> Any:
        consumer = self._consumer
        if consumer is None:
            raise KafkaClientError("the consumer is stopped")
        return consumer

    async def _blocking(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return await asyncio.to_thread(call, *args, **kwargs)
        except (confluent_kafka.KafkaException, RuntimeError) as exc:
            raise _error(exc) from exc

    async def _in_thread(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._thread, lambda: call(*args, **kwargs))
        except (confluent_kafka.KafkaException, RuntimeError) as exc:
            raise _error(exc) from exc

    async def _watermarks(self, tp: TopicPartition) -> tuple[int, int]:
        low, high = await self._blocking(
            self._live().get_watermark_offsets,
            confluent_kafka.TopicPartition(tp.topic, tp.partition),
            timeout=_LOOKUP_TIMEOUT,
        )
        return int(low), int(high)

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: (await self._watermarks(tp))[1] for tp in tps}

    async def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: (await self._watermarks(tp))[0] for tp in tps}

    async def committed(self, tp: TopicPartition) -> int | None:
        found = await self._blocking(
            self._live().committed,
            [confluent_kafka.TopicPartition(tp.topic, tp.partition)],
            timeout=_LOOKUP_TIMEOUT,
        )
        if not found or found[0].error is not None or found[0].offset < 0:
            return None
        return int(found[0].offset)

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        # A synchronous commit made from another thread returns only when the consumer's
        # thread polls again (up to seconds later, measured against tansu), so it is made
        # in that thread, between two consume() calls; but while that thread waits in a
        # revoke callback for the subscription (which commits), from the default executor.
        call = self._blocking if self._in_callback else self._in_thread
        result = await call(
            self._live().commit,
            offsets=[
                confluent_kafka.TopicPartition(tp.topic, tp.partition, offset)
                for tp, offset in offsets.items()
            ],
            asynchronous=False,
        )
        failed = [p for p in result or () if p.error is not None]
        if failed:
            raise KafkaClientError(f"commit refused: {failed[0].error}")

    # Metadata. ----------------------------------------------------------------------

    async def force_metadata_update(self) -> None:
        metadata = await self._blocking(self._live().list_topics, timeout=_LOOKUP_TIMEOUT)
        self._metadata_at = time.monotonic()
        self._topics = {
            name: set(topic.partitions)
            for name, topic in metadata.topics.items()
            if topic.error is None
        }

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        """The topic's partitions in the cached metadata, refreshed every ``metadata_refresh``."""
        stale = time.monotonic() - self._metadata_at > self._settings.metadata_refresh
        if stale and (self._refreshing is None or self._refreshing.done()):
            self._metadata_at = time.monotonic()
            self._refreshing = asyncio.ensure_future(self.force_metadata_update())
            self._refreshing.add_done_callback(_retrieved)
        return self._topics.get(topic)


def _logged(future: concurrent.futures.Future[Any]) -> None:
    if not future.cancelled() and (exc := future.exception()) is not None:
        logger.warning("kafka: the handling of an assignment failed: %r", exc)


def _retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


# Producing. ------------------------------------------------------------------------


class ConfluentProducer:
    """A ``confluent_kafka.Producer``: ``produce()`` on the loop, delivery reports served apart.

    :meth:`produce` returns a future resolved (or failed) by the record's
    delivery report when ``confirm`` asks for one. Without it the producer is
    made with ``delivery.report.only.error``: confluent-kafka calls Python for
    a failed record only, and the loop itself serves the reports (``poll(0)``,
    which never waits) every :data:`_POLL_EVERY` records and on a timer while
    records are outstanding. A failed record is logged (counted per topic,
    partition and error), never dropped in silence.

    With ``confirm`` a thread of the producer's own polls (``poll()`` waits for
    the next report, so a confirming publisher hears at once) and hands each
    polled batch of reports to the loop with one ``call_soon_threadsafe``.
    """

    def __init__(self, settings: KafkaOptions) -> None:
        self._settings = settings
        self._confirm = settings.confirm
        config = {**settings.librdkafka_producer(), "error_cb": self._on_error}
        if not self._confirm:
            config["delivery.report.only.error"] = True
            config["on_delivery"] = self._failed
        self._producer = confluent_kafka.Producer(config)
        self._loop = asyncio.get_running_loop()
        #: Delivery reports polled in the thread, settled on the loop: (future, error).
        self._reports: deque[tuple[asyncio.Future[None], Any]] = deque()
        #: Failed records of confirm=False publishes not logged yet: (topic, partition, error).
        #: A deque: flush() serves reports in a thread of its own while the loop may too.
        self._lost: deque[tuple[str, int, str]] = deque()
        self._servers = ",".join(settings.bootstrap_servers)
        self._unpolled = 0
        self._timer: asyncio.TimerHandle | None = None
        self._stopping = threading.Event()
        self._poller: threading.Thread | None = None
        if self._confirm:
            self._poller = threading.Thread(target=self._poll, name="rdkafka-producer", daemon=True)
            self._poller.start()

    def _on_error(self, error: Any) -> None:
        logger.debug("kafka (librdkafka): %s", error)

    # confirm=False: reports of failed records only, served on the loop. ---------------

    def _failed(self, error: Any, message: Any) -> None:
        """The delivery report of a failed record published without ``confirm``."""
        if error is not None:
            self._lost.append((message.topic(), message.partition(), str(error)))

    def _serve(self) -> None:
        """Serve the delivery reports there are, without waiting (on the loop)."""
        self._unpolled = 0
        self._producer.poll(0)
        if self._lost:
            self._log_lost()

    def _log_lost(self) -> None:
        """Log the failed records, one line per topic, partition and error."""
        lost, failed = self._lost, Counter[tuple[str, int, str]]()
        while lost:
            failed[lost.popleft()] += 1
        for (topic, partition, error), count in failed.items():
            logger.error(
                "kafka: %d record(s) published to %s partition %d were not stored by %s: %s "
                "(publish with confirm=True to see such errors at publish)",
                count,
                topic,
                partition,
                self._servers,
                error,
            )

    def _tick(self) -> None:
        self._timer = None
        self._serve()
        if len(self._producer):
            self._timer = self._loop.call_later(_POLL_INTERVAL, self._tick)

    # confirm=True: every report, polled in the producer's thread. ---------------------

    def _poll(self) -> None:
        producer, reports, stopping = self._producer, self._reports, self._stopping
        while not stopping.is_set():
            if producer.poll(_POLL_WAIT) and reports:
                self._hand_over()

    def _hand_over(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed
            self._loop.call_soon_threadsafe(self._settle)

    def _settle(self) -> None:
        reports = self._reports
        while reports:
            future, error = reports.popleft()
            if not future.done():
                if error is None:
                    future.set_result(None)
                else:
                    future.set_exception(KafkaClientError(str(error)))

    def produce(
        self,
        topic: str,
        value: bytes,
        key: bytes | None,
        partition: int | None,
        headers: dict[str, str] | None,
    ) -> asyncio.Future[None] | None:
        """Queue the record in librdkafka (never waits); its delivery future if ``confirm``.

        ``headers`` is the message's dict as it is: confluent-kafka encodes its str
        values as UTF-8 in C (a list of encoded pairs built in Python cost 0.65 us more).
        Raises ``BufferError`` when librdkafka's queue is full: :meth:`produce_later`.
        """
        if not self._confirm:
            try:
                self._producer.produce(
                    topic,
                    value,
                    key,
                    partition=-1 if partition is None else partition,
                    headers=cast(Any, headers),  # str values: confluent-kafka encodes them
                )
            except confluent_kafka.KafkaException as exc:
                raise _error(exc) from exc
            self._unpolled += 1
            if self._unpolled >= _POLL_EVERY:
                self._serve()
            if self._timer is None:
                self._timer = self._loop.call_later(_POLL_INTERVAL, self._tick)
            return None
        future: asyncio.Future[None] = self._loop.create_future()
        reports = self._reports

        def delivered(error: Any, _message: Any) -> None:  # in the polling thread
            reports.append((future, error))

        try:
            self._producer.produce(
                topic,
                value,
                key,
                partition=-1 if partition is None else partition,
                headers=cast(Any, headers),
                on_delivery=delivered,
            )
        except confluent_kafka.KafkaException as exc:
            raise _error(exc) from exc
        return future

    async def produce_later(
        self,
        topic: str,
        value: bytes,
        key: bytes | None,
        partition: int | None,
        headers: dict[str, str] | None,
    ) -> asyncio.Future[None] | None:
        """:meth:`produce`, once librdkafka's queue has room (``queue.buffering.max.*``)."""
        while True:
            if not self._confirm:
                self._serve()  # a record's room is freed once its report is served
            await asyncio.sleep(0.001)
            try:
                return self.produce(topic, value, key, partition, headers)
            except BufferError:
                continue

    async def flush(self) -> None:
        """Wait until every record produced so far is stored or failed."""
        try:
            # flush() serves the reports (confirm=False: the failed ones) in its thread.
            while await asyncio.to_thread(self._producer.flush, 0.1):
                pass  # records left: flush() returns their count
        finally:
            self._settle()
            if self._lost:
                self._log_lost()

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._stopping.set()
        if self._poller is not None:
            await asyncio.to_thread(self._poller.join)
        # Reports not served before it stopped.
        await asyncio.to_thread(self._producer.poll, 0)
        self._settle()
        if self._lost:
            self._log_lost()


async def start_confluent(settings: KafkaOptions) -> tuple[ConfluentProducer, AdminClient | None]:
    """The producer and admin client; a clear error if the server does not answer."""
    producer = ConfluentProducer(settings)
    admin = AdminClient(settings.librdkafka_common()) if settings.auto_create_topics else None
    try:
        # librdkafka connects lazily: ask for the metadata to know the server answers.
        await asyncio.to_thread(
            producer._producer.list_topics, timeout=min(settings.request_timeout, _LOOKUP_TIMEOUT)
        )
    except confluent_kafka.KafkaException as exc:
        await producer.close()
        where = ",".join(settings.bootstrap_servers)
        raise KafkaConnectError(
            f"cannot connect to kafka at {where} (librdkafka: {exc}); is the server running, "
            "is the address host:port right, and does the server require TLS or SASL?"
        ) from exc
    return producer, admin


async def create_topic(admin: AdminClient, topic: str, partitions: int, replication: int) -> None:
    """Create ``topic``; nothing if it exists already."""
    futures = admin.create_topics([NewTopic(topic, partitions, replication)])
    try:
        await asyncio.wrap_future(futures[topic])
    except confluent_kafka.KafkaException as exc:
        error = exc.args[0] if exc.args else None
        code = error.code() if isinstance(error, confluent_kafka.KafkaError) else None
        if code == confluent_kafka.KafkaError.TOPIC_ALREADY_EXISTS:
            return
        raise _error(exc) from exc
