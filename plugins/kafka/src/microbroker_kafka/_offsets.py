"""Which offsets a group may commit, and bounded commits.

A group commits, per partition, the offset after the longest run of *settled*
records from where it started: acked, or given up (rejected after the retry
policy's last attempt, its dead letter published). A record nacked and waiting
for its redelivery, or still in its handler, stops the run, so the committed
offset never passes a record that may still be delivered again; and a poison
record given up no longer holds it back.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from aiokafka import AIOKafkaConsumer, TopicPartition  # type: ignore[import-untyped]
from aiokafka.errors import KafkaError as AioKafkaError  # type: ignore[import-untyped]

logger = logging.getLogger("microbroker.broker.kafka")

COMMIT_TIMEOUT = 3.0
"""Seconds one commit (or committed-offset lookup) may take."""


class Partition:
    """The offsets of one partition a subscription holds: which ones may be committed."""

    __slots__ = ("committed", "done", "next", "outstanding", "revoked", "safe")

    def __init__(self, start: int) -> None:
        #: Offsets handed to the handler and not settled yet, in order.
        self.outstanding: deque[int] = deque()
        #: Settled offsets behind an unsettled one.
        self.done: set[int] = set()
        self.safe = start
        """The offset after the longest settled run: what may be committed."""
        self.committed = start
        self.next = start
        """The offset after the last record handed to the handler: where to read on."""
        self.revoked = False

    def settle(self, offset: int) -> None:
        """``offset`` was acked or given up: it will not be delivered again by this member."""
        outstanding = self.outstanding
        if outstanding and outstanding[0] == offset:
            outstanding.popleft()
            last = offset
            done = self.done
            while outstanding and outstanding[0] in done:
                last = outstanding.popleft()
                done.discard(last)
            self.safe = last + 1
        elif offset in outstanding:
            self.done.add(offset)

    @property
    def dirty(self) -> bool:
        """Whether there is a commit to make."""
        return self.safe > self.committed and not self.revoked


async def commit_within(
    consumer: AIOKafkaConsumer,
    offsets: dict[TopicPartition, int],
    what: str,
    level: int = logging.INFO,
) -> bool:
    """Commit ``offsets`` within :data:`COMMIT_TIMEOUT`; False, logged as ``what``, if not.

    Every commit is bounded: aiokafka retries one the server refuses with a
    retriable error (a topic it lost) for ever.
    """
    try:
        await asyncio.wait_for(consumer.commit(offsets), COMMIT_TIMEOUT)
    except (AioKafkaError, TimeoutError) as exc:
        logger.log(level, "kafka: %s of %s failed: %s", what, list(offsets), exc)
        return False
    return True


async def committed(consumer: AIOKafkaConsumer, tp: TopicPartition) -> int | None:
    """The group's committed offset of ``tp``; None if it has none or cannot say in time."""
    try:
        offset = await asyncio.wait_for(consumer.committed(tp), COMMIT_TIMEOUT)
    except (AioKafkaError, TimeoutError):
        return None
    return offset if isinstance(offset, int) else None
