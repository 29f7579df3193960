"""Which offsets a group may commit, and bounded commits.

A group commits, per partition, the offset after the longest run of *settled*
records from where it started: acked, or given up (rejected after the retry
policy's last attempt, its dead letter published). A record nacked and waiting
for its redelivery, or still in its handler, stops the run, so the committed
offset never passes a record that may still be delivered again; and a poison
record given up no longer holds it back.

The run is read from the deliveries themselves when it is asked for (at a
commit, and after each fetched batch): an ack is only the delivery's state
(``KafkaDelivery.acks_locally``), with no call per record into this module.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, TopicPartition  # type: ignore[import-untyped]
from aiokafka.errors import KafkaError as AioKafkaError  # type: ignore[import-untyped]

if TYPE_CHECKING:
    from ._delivery import KafkaDelivery

logger = logging.getLogger("microbroker.broker.kafka")

COMMIT_TIMEOUT = 3.0
"""Seconds one commit (or committed-offset lookup) may take."""


class Partition:
    """The records of one partition a subscription holds: which offsets may be committed."""

    __slots__ = (
        "_safe",
        "check",
        "committed",
        "next",
        "pending",
        "reset_to",
        "revoked",
        "witness",
    )

    def __init__(self, start: int) -> None:
        #: The deliveries handed to the handler, in offset order, from the first one
        #: not known to be settled.
        self.pending: deque[KafkaDelivery] = deque()
        self._safe = start
        self.committed = start
        self.next = start
        """The offset after the last record handed to the handler: where to read on."""
        self.revoked = False
        #: The last record of the last batch handed whole to the handler (the
        #: client's own object): what the server should still hold at its offset.
        self.witness: Any = None
        #: A record this subscriber handed from the partition before it was
        #: revoked: the server's record at its offset must be the same, else the
        #: server's log was replaced (see KafkaSubscriber._check_witness). When
        #: ``next`` lies past it, it was read again only to be compared.
        self.check: Any = None
        #: The end of the log when the partition was assigned, if it lay before
        #: ``next``: where ``offset_reset="latest"`` goes on from once a fetch
        #: shows the log does end before ``next``.
        self.reset_to: int | None = None

    @property
    def safe(self) -> int:
        """The offset after the longest settled run: what may be committed."""
        return self.advance()

    def advance(self) -> int:
        """Drop the settled run from :attr:`pending`; the offset after it (:attr:`safe`).

        A record counts as settled once its delivery is acked or given up; a nacked
        one counts as its redelivery does, once that is made.
        """
        pending = self.pending
        while pending:
            head = pending[0]
            if head.acked or head._given_up:
                self._safe = pending.popleft().offset + 1
            elif head._again is not None:
                pending[0] = head._again  # nacked: its redelivery stands for it now
            else:
                break
        return self._safe

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
