"""Fault tests: the tansu server stalled (SIGSTOP/SIGCONT) or killed mid-stream.

tansu stores in memory here (its other engines are postgres:// and s3://, not
available to these tests), so a killed server comes back empty: what was stored
before the kill is gone by design. The kill test therefore checks what can be
checked: the clients ride over the restart, and nothing published and
confirmed after it is lost.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Callable

from kafka_helpers import FAST, eventually
from support.kafka_server import KafkaServer

from microbroker import Delivery, Message, MicrobrokerError
from microbroker_kafka import KafkaBroker

TOTAL = 10_000


async def publish_retrying(broker: KafkaBroker, topic: str, body: bytes) -> int:
    """Publish until the server confirms; returns the attempts it took (at least once)."""
    attempts = 0
    while True:
        attempts += 1
        try:
            await broker.publish(topic, Message(body))
            return attempts
        except MicrobrokerError:
            await asyncio.sleep(0.1)


async def test_a_stalled_server_loses_nothing(
    new_kafka_server: Callable[..., KafkaServer],
) -> None:
    server = new_kafka_server(name="tansu-stall")
    topic, group = f"faults.{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    received: Counter[bytes] = Counter()
    async with (
        KafkaBroker(server.address, request_timeout=20.0, **FAST) as pub,
        KafkaBroker(
            server.address, request_timeout=20.0, **{**FAST, "session_timeout": 15.0}
        ) as sub,
    ):

        async def handler(delivery: Delivery) -> None:
            received[delivery.message.body] += 1

        await sub.subscribe(topic, handler, queue=group)
        sem = asyncio.Semaphore(64)

        async def one(n: int) -> None:
            async with sem:
                await publish_retrying(pub, topic, str(n).encode())

        stream = asyncio.gather(*(one(n) for n in range(TOTAL)))
        await eventually(lambda: len(received) >= TOTAL // 3, 60, "a third of the stream")
        server.pause()
        await asyncio.sleep(3.0)
        server.resume()
        await asyncio.wait_for(stream, 120)
        await eventually(lambda: len(received) >= TOTAL, 120, f"delivery of all {TOTAL}")
    missing = {str(n).encode() for n in range(TOTAL)} - set(received)
    duplicates = sum(received.values()) - len(received)
    print(f"\nstall: {len(received)} of {TOTAL} received, {duplicates} duplicates")
    assert not missing, f"{len(missing)} messages lost across the stall"


async def test_a_killed_and_restarted_server_loses_nothing_confirmed_after_it(
    new_kafka_server: Callable[..., KafkaServer],
) -> None:
    server = new_kafka_server(name="tansu-kill")
    topic, group = f"faults.{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    received: Counter[bytes] = Counter()
    confirmed_after: set[bytes] = set()
    restarted = False
    async with (
        KafkaBroker(server.address, request_timeout=5.0, **FAST) as pub,
        KafkaBroker(server.address, request_timeout=5.0, **FAST) as sub,
    ):

        async def handler(delivery: Delivery) -> None:
            received[delivery.message.body] += 1

        await sub.subscribe(topic, handler, queue=group)
        sem = asyncio.Semaphore(64)

        async def one(n: int) -> None:
            body = str(n).encode()
            async with sem:
                await publish_retrying(pub, topic, body)
            if restarted:
                confirmed_after.add(body)

        stream = asyncio.gather(*(one(n) for n in range(TOTAL)))
        await eventually(lambda: len(received) >= TOTAL // 3, 60, "a third of the stream")
        await asyncio.to_thread(server.restart, hard=True)  # SIGKILL, then start again
        restarted = True
        await asyncio.wait_for(stream, 180)
        await eventually(
            lambda: confirmed_after <= set(received), 120, "delivery of what was sent after"
        )
    duplicates = sum(received.values()) - len(received)
    lost_with_server = TOTAL - len(received)
    print(
        f"\nkill: {len(received)} of {TOTAL} received, {len(confirmed_after)} confirmed after "
        f"the restart (all received), {duplicates} duplicates, {lost_with_server} gone with "
        "the in-memory store"
    )
    assert confirmed_after, "nothing was published after the restart"
    assert confirmed_after <= set(received)
