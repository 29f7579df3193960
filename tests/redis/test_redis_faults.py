"""Faults on a real redis-server: kill -9 mid-stream, a consumer process killed, SIGSTOP.

Each test starts a server of its own (``new_redis_server``): the kill, stop and
continue signals go to that ``redis-server`` only, restarted on the same port
and data directory. Streams mode unless said otherwise, a queue group, and a
publisher that retries what raised, as a careful user does.

What Redis keeps across a kill -9 is what it had written: with ``appendonly
yes`` and ``appendfsync always`` (``durable=True``) every write it answered;
with the stock settings only the last RDB snapshot (the save points are
minutes apart), so the stream and its groups of the last seconds are gone.
An entry read by XREADGROUP whose reply the fault lost stays pending with its
consumer and comes back by XAUTOCLAIM after ``claim_idle``; an entry handled
whose XACK the fault lost comes back too: those duplicates are counted and
printed, never asserted away.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from microbroker_redis import RedisBroker
from support.consumer_process import spawn_consumer
from support.eventually import eventually
from support.faults import RetryingPublisher
from support.redis_server import RedisServer

import microbroker
from microbroker import PublishError

pytestmark = pytest.mark.slow

#: Publishes wait for a killed server to come back; entries whose XREADGROUP reply a fault
#: lost (pending with the consumer, never received) come back after 2 s, not 30.
OPTIONS: dict[str, Any] = {
    "publish_timeout": 60.0,
    "claim_idle": 2.0,
    "claim_interval": 0.5,
    "max_reconnect_delay": 0.5,
}


def _duplicates(counts: Counter[int]) -> int:
    return sum(n - 1 for n in counts.values() if n > 1)


async def _stream_length(server: RedisServer, key: str) -> int:
    raw = aioredis.Redis.from_url(server.url)
    try:
        return int(await raw.xlen(key))
    finally:
        await raw.aclose()


@pytest.mark.timeout(300)
async def test_a_durable_server_killed_mid_stream_loses_nothing_it_answered(
    new_redis_server: Callable[..., RedisServer],
) -> None:
    """``appendonly yes`` + ``appendfsync always``: Redis answers an XADD once it is in the
    append-only file, so every publish that returned is delivered after the restart."""
    server = new_redis_server(name="kill9-aof", durable=True)
    total = 10_000
    counts: Counter[int] = Counter()
    topic = f"orders.{uuid.uuid4().hex[:8]}"

    async def handler(delivery: microbroker.Delivery) -> None:
        counts[int(delivery.message.body)] += 1

    sub = RedisBroker(server.url, **OPTIONS)
    pub = RedisBroker(server.url, **OPTIONS)
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
        stored = await _stream_length(server, topic)
        print(
            f"\nkill -9 mid-stream, appendfsync always: {total} published "
            f"({published_at_kill} returned before the kill, {delivered_at_kill} delivered), "
            f"0 lost, {_duplicates(counts)} delivered twice, {stored - total} stored twice "
            f"(XADDs the kill left unanswered, sent again), {publisher.retries} publishes retried"
        )
    finally:
        await pub.disconnect()
        await sub.disconnect()


@pytest.mark.timeout(300)
async def test_a_stock_server_killed_mid_stream_loses_what_it_had_not_saved(
    new_redis_server: Callable[..., RedisServer],
) -> None:
    """Stock settings (RDB snapshots minutes apart, no append-only file): a kill -9 loses the
    stream's last seconds, including entries whose XADD had returned. What the broker owes:
    it reconnects, creates the lost group again, and delivers everything published after
    the restart; a publish while the server is down waits for it (``publish_timeout``) or
    fails with a ``PublishError`` that says so, never returns as if it were stored."""
    server = new_redis_server(name="kill9-stock")
    total, during, after = 5000, 100, 1000
    counts: Counter[int] = Counter()
    topic = f"orders.{uuid.uuid4().hex[:8]}"

    async def handler(delivery: microbroker.Delivery) -> None:
        counts[int(delivery.message.body)] += 1

    sub = RedisBroker(server.url, **OPTIONS)
    pub = RedisBroker(server.url, **OPTIONS)
    impatient = RedisBroker(server.url, publish_timeout=0.5)
    for broker in (sub, pub, impatient):
        await broker.connect()
    publisher = RetryingPublisher(pub, topic, concurrency=64, attempts=20)
    restarted = False
    after_restart: set[int] = set()

    async def publish(n: int) -> None:
        await publisher.publish(n)
        if restarted:
            after_restart.add(n)

    try:
        await sub.subscribe(topic, handler, queue="billing")
        tasks = [asyncio.create_task(publish(n)) for n in range(total)]
        await eventually(lambda: len(counts) >= 1000, "deliveries before the kill", 120)
        await asyncio.to_thread(server.kill)
        delivered_at_kill, published_at_kill = len(counts), publisher.done
        # While the server is down: a publish waits for it, or says it could not.
        waiting = [asyncio.create_task(publish(n)) for n in range(total, total + during)]
        with pytest.raises(PublishError, match="publish_timeout") as failed:
            await impatient.publish(topic, microbroker.Message(b"-1"))
        assert not any(task.done() for task in waiting), "a publish returned with the server down"
        restarted = True
        await asyncio.to_thread(server.start)
        await asyncio.gather(*tasks, *waiting)
        await publisher.publish_in_order(range(total + during, total + during + after))
        end = total + during + after
        await eventually(
            lambda: set(range(total, end)) <= set(counts),
            "every message published during the outage and after the restart delivered",
            60,
        )
        returned_after = after_restart - set(range(total, end))
        assert returned_after <= set(counts), (
            f"{len(returned_after - set(counts))} publishes that returned after the restart "
            "were not delivered"
        )
        lost = sorted(set(range(total)) - set(counts))
        print(
            f"\nkill -9 mid-stream, stock settings: of {total} published before and across the "
            f"kill ({published_at_kill} had returned, {delivered_at_kill} delivered), "
            f"{len(lost)} lost with the server's memory; {len(returned_after)} returned after "
            f"the restart, all delivered; {during} published while it was down waited and "
            f"arrived, {after} after it arrived; {_duplicates(counts)} delivered twice; "
            f"the impatient publish: {failed.value}"
        )
    finally:
        for broker in (impatient, pub, sub):
            await broker.disconnect()


@pytest.mark.timeout(180)
async def test_a_killed_consumer_process_hands_its_pending_entries_to_the_group(
    new_redis_server: Callable[..., RedisServer], tmp_path: Path
) -> None:
    server = new_redis_server(name="consumer-kill")
    total = 300
    topic = f"jobs.{uuid.uuid4().hex[:8]}"
    handled_file = tmp_path / "handled"
    child = spawn_consumer("redis", server.url, topic, "workers", handled_file)
    here: dict[int, int] = {}
    redelivered: set[int] = set()

    async def handler(delivery: microbroker.Delivery) -> None:
        n = int(delivery.message.body)
        here[n] = max(here.get(n, 0), delivery.attempt)
        if delivery.attempt > 1:
            redelivered.add(n)

    pub = RedisBroker(server.url)
    member = RedisBroker(server.url, claim_idle=1.0, claim_interval=0.2)
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

        # The child reads up to its batch (256) at once and handles them slowly: kill it
        # mid-batch, its entries pending with its consumer in the group.
        await eventually(lambda: len(child_handled()) >= 20, "the child handling a batch", 60)
        child.kill()
        child.wait()
        done_by_child = child_handled()
        assert len(done_by_child) < total, "the child finished before it was killed"
        # Another member joins after the kill: it can only get the child's entries by
        # taking them over (XAUTOCLAIM) once they have been idle for claim_idle.
        await member.connect()
        await member.subscribe(topic, handler, queue="workers")
        missing = lambda: set(range(total)) - done_by_child - set(here)  # noqa: E731
        await eventually(lambda: not missing(), "every message handled by someone", 60)
        print(
            f"\nconsumer killed after handling {len(done_by_child)} of {total}: the other member "
            f"got {len(here)}, {len(redelivered)} of them taken over from the dead consumer "
            f"(attempt 2 or more), {len(set(here) & done_by_child)} handled twice"
        )
        assert redelivered, "the child's pending entries should come back as redeliveries"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        await member.disconnect()
        await pub.disconnect()


@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    ("pause", "timeouts"),
    [(3.0, {}), (6.0, {"block": 0.5, "socket_timeout": 2.0})],
    ids=["shorter-than-socket-timeout", "past-the-socket-timeout"],
)
async def test_nothing_is_lost_when_the_server_is_frozen_and_thawed(
    new_redis_server: Callable[..., RedisServer], pause: float, timeouts: dict[str, float]
) -> None:
    """SIGSTOP, then SIGCONT. Within ``socket_timeout`` the commands wait and are answered
    late; past it the client gives each connection up and sends its command again on a new
    one (a retried XADD can be stored twice; an XREADGROUP answered to a connection that
    was given up leaves its entries pending, taken back by XAUTOCLAIM)."""
    server = new_redis_server(name="freeze")
    total = 4000
    counts: Counter[int] = Counter()
    topic = f"stall.{uuid.uuid4().hex[:8]}"

    async def handler(delivery: microbroker.Delivery) -> None:
        counts[int(delivery.message.body)] += 1

    options = {**OPTIONS, **timeouts}
    sub = RedisBroker(server.url, **options)
    pub = RedisBroker(server.url, **options)
    await sub.connect()
    await pub.connect()
    publisher = RetryingPublisher(pub, topic, concurrency=32, attempts=20)
    try:
        await sub.subscribe(topic, handler, queue="stall")
        tasks = publisher.start(range(total))
        await eventually(lambda: len(counts) >= 1000, "deliveries before the stall", 60)
        server.pause()
        try:
            # The fault itself lasts this long. The answers Redis had sent before it stopped
            # arrive in the first moments; after them nothing is answered: publishes wait,
            # or fail with a PublishError (which the publisher retries).
            await asyncio.sleep(1.0)
            done_at_freeze = publisher.done
            await asyncio.sleep(pause - 1.0)
            frozen = publisher.done - done_at_freeze
        finally:
            server.resume()
        await asyncio.gather(*tasks)
        await eventually(
            lambda: len(counts) == total,
            f"every message delivered ({len(counts)} of {total}, {publisher.retries} retried)",
            120,
        )
        assert publisher.last_error is None or isinstance(publisher.last_error, PublishError)
        stored = await _stream_length(server, topic)
        print(
            f"\nSIGSTOP {pause}s (socket_timeout {options.get('socket_timeout', 10.0)}s): "
            f"{total} published, 0 lost, {_duplicates(counts)} delivered twice, "
            f"{stored - total} stored twice, {publisher.retries} publishes retried "
            f"(last error {publisher.last_error!r}), {frozen} returned in the freeze's last "
            f"{pause - 1.0:.0f}s"
        )
    finally:
        await pub.disconnect()
        await sub.disconnect()


@pytest.mark.timeout(120)
async def test_pubsub_reconnects_after_the_server_is_killed(
    new_redis_server: Callable[..., RedisServer],
) -> None:
    """Pub/Sub keeps nothing: what was published while a subscriber was not subscribed (the
    server down, or the subscription not made again yet) is lost, at most once. The broker
    owes: both sides reconnect by themselves, delivery resumes, order is kept, and a
    publish only ever raises a ``MicrobrokerError``."""
    server = new_redis_server(name="kill9-pubsub")
    options = {"mode": "pubsub", "publish_timeout": 30.0, "max_reconnect_delay": 0.5}
    received: list[int] = []
    topic = f"live.{uuid.uuid4().hex[:8]}"

    async def handler(delivery: microbroker.Delivery) -> None:
        received.append(int(delivery.message.body))

    sub = RedisBroker(server.url, **options)
    pub = RedisBroker(server.url, **options)
    await sub.connect()
    await pub.connect()
    try:
        await sub.subscribe(topic, handler)
        errors: list[BaseException] = []
        sent = 0
        stop = asyncio.Event()

        async def publish_forever() -> None:
            nonlocal sent
            while not stop.is_set():
                try:
                    await pub.publish(topic, microbroker.Message(str(sent).encode()))
                except microbroker.MicrobrokerError as exc:
                    errors.append(exc)
                sent += 1
                await asyncio.sleep(0.002)

        publishing = asyncio.create_task(publish_forever())
        await eventually(lambda: len(received) >= 200, "deliveries before the kill")
        await asyncio.to_thread(server.kill)
        await asyncio.to_thread(server.start)
        restarted_at = sent
        await eventually(
            lambda: any(n > restarted_at for n in received), "deliveries after the restart", 30
        )
        stop.set()
        await publishing
        assert pub.connected
        assert sub.connected
        assert received == sorted(received), "order is kept for one publisher"
        lost = sent - len(set(received))
        print(
            f"\nPub/Sub kill -9: {sent} published, {len(set(received))} received, {lost} lost "
            f"(at most once), {len(received) - len(set(received))} twice, "
            f"{len(errors)} publish errors"
        )
    finally:
        await pub.disconnect()
        await sub.disconnect()
