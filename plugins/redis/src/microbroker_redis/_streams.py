"""Redis Streams: a consumer group per subscription, XREADGROUP, XACK, XAUTOCLAIM.

- A queue group is the consumer group of that name on the topic's stream; each
  subscription is a consumer of its own in it. A broadcast subscription (no
  queue) gets a consumer group of its own (``microbroker:broadcast:<random>``),
  destroyed when it unsubscribes, so that it too has acknowledgements and
  redeliveries. Groups are created at ``$``: a subscription receives what is
  published after ``subscribe()`` returns. A group the server lost (a restart
  without its data) is created again at ``0``, the start of what the stream
  holds since.
- Entries read go through a :class:`~microbroker.transport.Mailbox`
  (``Overflow.BLOCK``, ``batch`` entries) to the handler, one at a time, in order;
  the next XREADGROUP waits for room.
- ``ack`` and ``reject`` (the core has published the dead letter) are XACK,
  sent in batches by a task of the subscription. ``nack(delay)`` leaves the entry
  pending; after ``delay`` the subscription takes it again with XCLAIM, which
  counts a delivery, and delivers it with the attempt the server counted
  (``times_delivered`` of XPENDING).
- An entry pending with a consumer for ``claim_idle`` seconds (a dead consumer,
  or one closed with entries not handled) is taken over by another member with
  XAUTOCLAIM, every ``claim_interval`` seconds, with its attempt counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, cast

import redis.asyncio as aioredis
import redis.exceptions

from microbroker.transport import (
    Delivery,
    Handler,
    Mailbox,
    Message,
    Overflow,
    PublishError,
    Subscriber,
    backoff,
    report_error,
)

from ._connection import LOST, retrying
from ._fields import from_fields
from .options import RedisOptions

BROADCAST_GROUP = "microbroker:broadcast:"


def consumer_name() -> str:
    """A consumer name of one's own: host, process, and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class StreamDelivery(Delivery):
    """One stream entry delivered to a subscription."""

    __slots__ = ("_fields", "_sub", "entry_id")

    def __init__(
        self,
        subscriber: StreamSubscriber,
        entry_id: bytes,
        fields: Mapping[bytes, bytes],
        attempt: int,
    ) -> None:
        super().__init__(subscriber.topic, None, queue=subscriber.queue, attempt=attempt)
        self._sub = subscriber
        self._fields = fields
        #: The entry's id in the stream (``b"1700000000000-0"``).
        self.entry_id = entry_id

    def load_message(self) -> Message:
        return from_fields(self._fields)

    async def on_ack(self) -> None:
        self._sub.acknowledge(self.entry_id)

    async def on_reject(self) -> None:
        self._sub.acknowledge(self.entry_id)

    async def on_nack(self, delay: float) -> None:
        self._sub.redeliver_later(self.entry_id, delay)

    async def on_release(self) -> None:
        # Handed back undelivered: it stays pending, for XAUTOCLAIM after claim_idle.
        self._sub.forget(self.entry_id)


class StreamSubscriber(Subscriber):
    """A subscription: its consumer group, its consumer, its reader and its mailbox."""

    def __init__(
        self,
        topic: str,
        deliver: Handler,
        *,
        queue: str | None,
        auto_ack: bool,
        client: aioredis.Redis,
        options: RedisOptions,
        on_unsubscribe: Callable[[StreamSubscriber], None] | None = None,
    ) -> None:
        super().__init__(topic, queue, auto_ack)
        self._deliver = deliver
        self._client = client
        self._options = options
        self._on_unsubscribe = on_unsubscribe
        #: The stream key and the consumer group and consumer this subscription reads as.
        self.key = options.key(topic)
        self.group = queue if queue else BROADCAST_GROUP + secrets.token_hex(8)
        self.consumer = consumer_name()
        self._active = False
        #: Entries read and not settled yet (in the mailbox, handled, or waiting to be redelivered).
        self._held: set[bytes] = set()
        self._timers: dict[bytes, asyncio.TimerHandle] = {}
        self._acks: list[bytes] = []
        self._acking: asyncio.Task[None] | None = None
        #: The reader waits for its batch to be handled: acks wait for it to send them.
        self._reader_collects = False
        self._tasks: list[asyncio.Task[None]] = []
        self._mailbox: Mailbox[StreamDelivery] = Mailbox(
            self._handle,
            capacity=options.batch,
            overflow=Overflow.BLOCK,
            name=f"redis subscription to {topic!r}",
        )

    @property
    def active(self) -> bool:
        return self._active

    # Starting ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Create the group (at ``$``): every later publish reaches this subscription."""
        await retrying(
            self._options, lambda: self._create_group("$"), timeout=self._options.publish_timeout
        )
        self._active = True
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._read(), name=f"redis reader of {self.key!r}"),
            loop.create_task(self._claim(), name=f"redis claimer of {self.key!r}"),
        ]

    async def _create_group(self, start: str) -> None:
        try:
            await self._client.xgroup_create(self.key, self.group, start, mkstream=True)
        except redis.exceptions.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    # Reading ----------------------------------------------------------------------------

    async def _read(self) -> None:
        options = self._options
        block = int(options.block * 1000)
        failures = 0
        while self._active:
            acks, self._acks = self._acks, []
            try:
                if acks:
                    # The last batch's acks go with the next read: one round trip, not two.
                    pipe = self._client.pipeline(transaction=False)
                    pipe.xack(self.key, self.group, *acks)
                    pipe.xreadgroup(
                        self.group, self.consumer, {self.key: ">"}, count=options.batch, block=block
                    )
                    acked, response = await pipe.execute(raise_on_error=False)
                    acks = []
                    if isinstance(acked, Exception):
                        report_error(acked, None)  # still pending: claimed again after claim_idle
                    if isinstance(response, Exception):
                        raise response
                else:
                    response = await self._client.xreadgroup(
                        self.group, self.consumer, {self.key: ">"}, count=options.batch, block=block
                    )
                failures = 0
            except asyncio.CancelledError:
                self._acks[:0] = acks  # sent when the subscription finishes
                raise
            except redis.exceptions.ResponseError as exc:
                if "NOGROUP" in str(exc):
                    await self._recreate()
                    continue
                failures += 1
                report_error(exc, None)
                await asyncio.sleep(self._wait(failures))
                continue
            except LOST:
                self._send_later(acks)
                failures += 1
                await asyncio.sleep(self._wait(failures))
                continue
            read: list[Any] = cast(list[Any], response) or []
            taken = False
            for _key, entries in read:
                for entry_id, fields in entries:
                    if fields is None:
                        continue  # deleted (XDEL, or trimmed) while pending
                    self._held.add(entry_id)
                    await self._put(StreamDelivery(self, entry_id, fields, 1))
                    taken = True
            if taken:
                # As a raw reader does: the batch is handled before the next read, which
                # then finds the entries that came meanwhile in one answer and carries
                # this batch's acks (one XREADGROUP and one XACK per batch, not per entry).
                self._reader_collects = True
                try:
                    await self._mailbox.join()
                finally:
                    self._reader_collects = False

    def _send_later(self, acks: list[bytes]) -> None:
        """Acks the reader could not send: the ack task sends them (retrying)."""
        if not acks:
            return
        self._acks[:0] = acks
        if self._acking is None or self._acking.done():
            self._acking = asyncio.get_running_loop().create_task(self._send_acks())

    async def _recreate(self) -> None:
        """The server lost the group (restarted without its data): create it again."""
        with contextlib.suppress(*LOST):
            await self._create_group("0")

    def _wait(self, failures: int) -> float:
        o = self._options
        return backoff(failures, o.reconnect_delay, 2.0, o.max_reconnect_delay)

    async def _put(self, delivery: StreamDelivery) -> None:
        while True:
            try:
                await self._mailbox.put(delivery)
                return
            except PublishError:
                continue  # a handler slower than put_timeout: keep waiting for room

    def _handle(self, delivery: StreamDelivery) -> Awaitable[None]:
        return self._deliver(delivery)

    # Taking over what others left -------------------------------------------------------

    async def _claim(self) -> None:
        options = self._options
        idle = int(options.claim_idle * 1000)
        while self._active:
            await asyncio.sleep(options.claim_interval)
            start: bytes | str = "0-0"
            try:
                while self._active:
                    response = await self._client.xautoclaim(
                        self.key, self.group, self.consumer, idle, start, count=options.batch
                    )
                    start, entries = response[0], response[1]
                    await self._deliver_claimed(entries)
                    if start in (b"0-0", "0-0"):
                        break
            except asyncio.CancelledError:
                raise
            except redis.exceptions.ResponseError as exc:
                if "NOGROUP" in str(exc):
                    await self._recreate()
                else:
                    report_error(exc, None)
            except LOST:
                continue

    async def _deliver_claimed(
        self, entries: list[tuple[bytes, Mapping[bytes, bytes] | None]]
    ) -> None:
        fresh = [(i, f) for i, f in entries if f is not None and i not in self._held]
        if not fresh:
            return
        counts = await self._delivery_counts([i for i, _ in fresh])
        for entry_id, fields in fresh:
            assert fields is not None
            if not self._active:
                return
            self._held.add(entry_id)
            await self._put(StreamDelivery(self, entry_id, fields, counts.get(entry_id, 2)))

    async def _delivery_counts(self, ids: list[bytes]) -> dict[bytes, int]:
        """How often the server delivered each of ``ids`` (XPENDING's ``times_delivered``)."""
        first, last = min(ids, key=_id_order), max(ids, key=_id_order)
        rows: list[dict[str, Any]] = await self._client.xpending_range(
            self.key,
            self.group,
            min=first,
            max=last,
            count=len(ids) + 64,
            consumername=self.consumer,
        )
        return {row["message_id"]: int(row["times_delivered"]) for row in rows}

    # Settlement (for StreamDelivery) ----------------------------------------------------

    def acknowledge(self, entry_id: bytes) -> None:
        """XACK ``entry_id`` (in the next batch of acknowledgements)."""
        self.forget(entry_id)
        self._acks.append(entry_id)
        if self._reader_collects and self._active:
            return  # the reader sends it with its next read
        if self._acking is None or self._acking.done():
            self._acking = asyncio.get_running_loop().create_task(self._send_acks())

    def forget(self, entry_id: bytes) -> None:
        self._held.discard(entry_id)
        timer = self._timers.pop(entry_id, None)
        if timer is not None:
            timer.cancel()

    async def _send_acks(self) -> None:
        while self._acks:
            ids, self._acks = self._acks, []
            try:
                await retrying(
                    self._options,
                    lambda ids=ids: self._client.xack(self.key, self.group, *ids),  # type: ignore[misc]
                    timeout=self._options.publish_timeout,
                )
            except LOST as exc:
                # Still pending on the server: delivered again, to this group, after claim_idle.
                report_error(exc, None)
            except redis.exceptions.ResponseError as exc:
                report_error(exc, None)

    def redeliver_later(self, entry_id: bytes, delay: float) -> None:
        """Take ``entry_id`` again after ``delay`` (XCLAIM) and deliver it, its attempt counted."""
        if not self._active:
            self.forget(entry_id)
            return
        loop = asyncio.get_running_loop()

        def due() -> None:
            self._timers.pop(entry_id, None)
            if self._active:
                task = loop.create_task(self._redeliver(entry_id))
                self._tasks.append(task)
                task.add_done_callback(self._done)

        self._timers[entry_id] = loop.call_later(max(delay, 0.0), due)

    def _done(self, task: asyncio.Task[None]) -> None:
        with contextlib.suppress(ValueError):
            self._tasks.remove(task)
        if not task.cancelled() and task.exception() is not None:
            report_error(task.exception(), None)  # type: ignore[arg-type]

    async def _redeliver(self, entry_id: bytes) -> None:
        try:
            entries: list[Any] = await retrying(
                self._options,
                lambda: cast(
                    "Awaitable[list[Any]]",
                    self._client.xclaim(self.key, self.group, self.consumer, 0, [entry_id]),
                ),
                timeout=self._options.publish_timeout,
            )
            if not entries or entries[0][1] is None:
                self._held.discard(entry_id)  # acked by another, deleted, or trimmed
                return
            counts = await self._delivery_counts([entry_id])
        except LOST as exc:
            # Pending still: XAUTOCLAIM delivers it again after claim_idle.
            self._held.discard(entry_id)
            report_error(exc, None)
            return
        if self._active:
            await self._put(StreamDelivery(self, entry_id, entries[0][1], counts.get(entry_id, 2)))

    # Ending -----------------------------------------------------------------------------

    async def unsubscribe(self) -> None:
        if not self._active:
            await self._mailbox.close()  # never started, or already closed: harmless
            return
        self._active = False
        if self._on_unsubscribe is not None:
            self._on_unsubscribe(self)
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for task in list(self._tasks):
            if task is not current:
                with contextlib.suppress(BaseException):
                    await task
        # The running handler finishes; what was not handled stays pending in the group
        # (another member takes it over after claim_idle).
        await self._mailbox.close()
        if self._mailbox.task is current:
            closing = asyncio.get_running_loop().create_task(self._finish_after(current))
            closing.add_done_callback(lambda t: t.cancelled() or t.exception())
            return
        await self._finish()

    async def _finish_after(self, worker: asyncio.Task[Any] | None) -> None:
        if worker is not None:
            with contextlib.suppress(BaseException):
                await worker
        await self._finish()

    async def _finish(self) -> None:
        acking = self._acking
        if acking is not None:
            with contextlib.suppress(BaseException):
                await acking
        if self._acks:
            await self._send_acks()
        if self.queue is None:
            # A broadcast group is this subscription's alone: it goes with it.
            with contextlib.suppress(*LOST, redis.exceptions.ResponseError):
                async with asyncio.timeout(self._options.connect_timeout):
                    await self._client.xgroup_destroy(self.key, self.group)


def _id_order(entry_id: bytes) -> tuple[int, int]:
    ms, _, seq = entry_id.partition(b"-")
    return int(ms), int(seq or 0)
