"""Shared settings of the kafka tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

#: Options that make group joins and fetches fast enough for tests on a small machine,
#: on topics of one partition (so that offsets and order are easy to state); a test of
#: several partitions says so. The conformance suite runs with the defaults instead.
FAST: dict[str, Any] = {
    "partitions": 1,
    "session_timeout": 6.0,
    "heartbeat_interval": 0.1,
    "rebalance_timeout": 3.0,
    "fetch_wait": 0.05,
    "commit_interval": 0.05,
    "offset_reset": "earliest",
    "persistence": False,
}


async def eventually(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Wait until ``predicate()`` holds; fail naming ``what`` after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout}s")
        await asyncio.sleep(0.02)


async def committed_offsets(address: str, group: str, topic: str) -> dict[int, int | None]:
    """What group ``group`` has committed on each partition of ``topic``, read by plain aiokafka."""
    consumer = AIOKafkaConsumer(bootstrap_servers=address, group_id=group)
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or set()
        return {p: await consumer.committed(TopicPartition(topic, p)) for p in sorted(partitions)}
    finally:
        await consumer.stop()


async def committed_to(
    address: str, group: str, topic: str, expected: dict[int, int | None], timeout: float
) -> None:
    """Wait until ``group`` has committed ``expected`` on ``topic``; fail with what it has."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (found := await committed_offsets(address, group, topic)) != expected:
        if loop.time() > deadline:
            raise AssertionError(
                f"group {group} committed {found} on {topic}, not {expected}, within {timeout}s"
            )
        await asyncio.sleep(0.1)
