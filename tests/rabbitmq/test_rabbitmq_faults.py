"""Faults on a real RabbitMQ: kill -9 mid-stream, a consumer process killed mid-batch, SIGSTOP.

Each test starts a node of its own (``new_rabbitmq_server``): the kill, stop and
continue signals go to that node's Erlang VM only. Queue groups are durable and
messages persistent (the defaults), publishes confirmed: what a publish
returned for must arrive; a message the server had delivered and whose ack the
fault lost arrives twice, and those duplicates are counted and printed.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from support.consumer_process import spawn_consumer
from support.eventually import eventually
from support.faults import RetryingPublisher
from support.rabbitmq_server import RabbitMQServer

import microbroker
from microbroker_rabbitmq import RabbitMQBroker

pytestmark = pytest.mark.slow

#: Long enough for a killed node to boot again while publishes wait for it.
OPTIONS = {"publish_timeout": 60.0, "max_reconnect_delay": 1.0}


@pytest.mark.timeout(300)
async def test_nothing_confirmed_is_lost_when_the_server_is_killed_mid_stream(
    new_rabbitmq_server: Callable[..., RabbitMQServer],
) -> None:
    server = new_rabbitmq_server(name="kill9")
    total = 10_000
    counts: Counter[int] = Counter()
    topic = f"orders.{uuid.uuid4().hex[:8]}"

    async def handler(delivery: microbroker.Delivery) -> None:
        counts[int(delivery.message.body)] += 1

    sub = RabbitMQBroker(server.url, **OPTIONS)
    pub = RabbitMQBroker(server.url, **OPTIONS)
    await sub.connect()
    await pub.connect()
    publisher = RetryingPublisher(pub, topic, concurrency=64, attempts=20)
    try:
        await sub.subscribe(topic, handler, queue="billing")
        tasks = publisher.start(range(total))
        await eventually(lambda: len(counts) >= 3000, "deliveries before the kill", 120)
        await asyncio.to_thread(server.kill)
        delivered_at_kill, published_at_kill = len(counts), publisher.done
        await asyncio.to_thread(server.start)
        await asyncio.gather(*tasks)

        def state() -> str:
            missing = sorted(set(range(total)) - set(counts))
            return (
                f"published {publisher.done} ({publisher.retries} retried, last error "
                f"{publisher.last_error!r}); {len(counts)} delivered ({delivered_at_kill} at the "
                f"kill, {published_at_kill} published then); missing {missing[:10]}..."
            )

        await eventually(lambda: len(counts) == total, "every message delivered: " + state(), 120)
        duplicates = sum(n - 1 for n in counts.values() if n > 1)
        print(
            f"\nkill -9 mid-stream: {total} published, 0 lost, {duplicates} duplicates, "
            f"{publisher.retries} publishes retried, {sub.reconnects} + {pub.reconnects} reconnects"
        )
        assert sub.reconnects >= 1
        assert pub.reconnects >= 1
    finally:
        await pub.disconnect()
        await sub.disconnect()


@pytest.mark.timeout(180)
async def test_a_killed_consumer_process_hands_its_unacked_messages_to_the_group(
    new_rabbitmq_server: Callable[..., RabbitMQServer], tmp_path: Path
) -> None:
    server = new_rabbitmq_server(name="consumer-kill")
    total = 300
    topic = f"jobs.{uuid.uuid4().hex[:8]}"
    handled_file = tmp_path / "handled"
    child = spawn_consumer("rabbitmq", server.url, topic, "workers", handled_file)
    here: dict[int, int] = {}
    redelivered: set[int] = set()

    async def handler(delivery: microbroker.Delivery) -> None:
        n = int(delivery.message.body)
        here[n] = max(here.get(n, 0), delivery.attempt)
        if delivery.attempt > 1:
            redelivered.add(n)

    pub = RabbitMQBroker(server.url)
    member = RabbitMQBroker(server.url, prefetch=1)
    try:
        assert child.stdout is not None
        line = await asyncio.to_thread(child.stdout.readline)
        assert line.strip() == b"subscribed", line + child.stdout.read()
        await pub.connect()
        for n in range(total):
            await pub.publish(topic, microbroker.Message(str(n).encode()))

        def child_handled() -> set[int]:
            text = handled_file.read_text() if handled_file.exists() else ""
            return {int(x) for x in text.split()}

        # The child takes up to its prefetch (256) and handles them slowly: kill it mid-batch.
        await eventually(lambda: len(child_handled()) >= 20, "the child handling a batch", 60)
        child.kill()
        child.wait()
        done_by_child = child_handled()
        assert len(done_by_child) < total, "the child finished before it was killed"
        # Another member of the group joins after the kill: it can only get the child's
        # messages from the server, which took back what the child had not acked.
        await member.connect()
        await member.subscribe(topic, handler, queue="workers")
        missing = lambda: set(range(total)) - done_by_child - set(here)  # noqa: E731
        await eventually(lambda: not missing(), "every message handled by someone", 60)
        print(
            f"\nconsumer killed after handling {len(done_by_child)} of {total}: the other member "
            f"got {len(here)}, {len(redelivered)} of them marked redelivered (attempt 2), "
            f"{len(set(here) & done_by_child)} handled twice"
        )
        assert redelivered, "the child's unacked messages should come back as redeliveries"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        await member.disconnect()
        await pub.disconnect()


@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    ("pause", "heartbeat"),
    [(3.0, 10), (8.0, 1)],
    ids=["shorter-than-heartbeat", "past-the-heartbeat"],
)
async def test_nothing_is_lost_when_the_server_is_frozen_and_thawed(
    new_rabbitmq_server: Callable[..., RabbitMQServer], pause: float, heartbeat: int
) -> None:
    """SIGSTOP, then SIGCONT. Within the heartbeat the connection survives the stall; past
    it the client gives the connection up, reconnects once the server answers again, and
    publishes again what was not confirmed."""
    server = new_rabbitmq_server(name="freeze")
    total = 4000
    counts: Counter[int] = Counter()
    topic = f"stall.{uuid.uuid4().hex[:8]}"

    async def handler(delivery: microbroker.Delivery) -> None:
        counts[int(delivery.message.body)] += 1

    options = {**OPTIONS, "heartbeat": heartbeat}
    sub = RabbitMQBroker(server.url, **options)
    pub = RabbitMQBroker(server.url, **options)
    await sub.connect()
    await pub.connect()
    publisher = RetryingPublisher(pub, topic, concurrency=32, attempts=20)
    try:
        await sub.subscribe(topic, handler, queue="stall")
        tasks = publisher.start(range(total))
        await eventually(lambda: len(counts) >= 1000, "deliveries before the stall", 60)
        server.pause()
        try:
            await asyncio.sleep(pause)  # the fault itself lasts this long
        finally:
            server.resume()
        await asyncio.gather(*tasks)
        await eventually(
            lambda: len(counts) == total,
            f"every message delivered ({len(counts)} of {total}, {publisher.retries} retried)",
            120,
        )
        duplicates = sum(n - 1 for n in counts.values() if n > 1)
        print(
            f"\nSIGSTOP {pause}s (heartbeat {heartbeat}s): {total} published, 0 lost, "
            f"{duplicates} duplicates, {sub.reconnects} + {pub.reconnects} reconnects"
        )
    finally:
        await pub.disconnect()
        await sub.disconnect()
