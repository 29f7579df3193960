"""Faults on a real server: killed and restarted mid-stream, and disconnect while it is down."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable

import pytest
from nats_helpers import eventually
from support.faults import RetryingPublisher
from support.nats_server import NatsServer

import microbroker
from microbroker.conformance import ErrorCatcher
from microbroker_nats import NatsBroker, UnackedPublish, UnackedPublishes

pytestmark = pytest.mark.slow


async def test_core_nats_reconnects_after_the_server_is_killed(
    new_nats_server: Callable[..., NatsServer],
) -> None:
    """Publisher and subscriber both resume by themselves; publishes never raise non-microbroker
    errors. Core NATS is at most once: what was sent while the server was down may be lost."""
    server = new_nats_server()
    options = {"reconnect_time_wait": 0.1}
    received: list[int] = []

    async def handler(delivery: microbroker.Delivery) -> None:
        received.append(int(delivery.message.body))

    sub = NatsBroker(server.url, **options)
    pub = NatsBroker(server.url, **options)
    await sub.connect()
    await pub.connect()
    try:
        await sub.subscribe("stream.live", handler)
        errors: list[BaseException] = []
        sent = 0
        stop = asyncio.Event()

        async def publish_forever() -> None:
            nonlocal sent
            while not stop.is_set():
                try:
                    await pub.publish("stream.live", microbroker.Message(str(sent).encode()))
                except microbroker.MicrobrokerError as exc:
                    errors.append(exc)
                sent += 1
                await asyncio.sleep(0.002)

        publisher = asyncio.create_task(publish_forever())
        await eventually(lambda: len(received) >= 50, "deliveries before the kill")
        await asyncio.to_thread(server.kill)
        await asyncio.sleep(0.5)
        await asyncio.to_thread(server.start)
        restarted_at = sent
        await eventually(
            lambda: any(n > restarted_at for n in received), "deliveries after the restart", 30
        )
        stop.set()
        await publisher
        assert pub.connected
        assert sub.connected
        assert received == sorted(received), "order is kept for one publisher"
        lost = sent - len(received)
        print(
            f"core NATS restart: {sent} sent, {len(received)} received, {lost} lost, "
            f"{len(errors)} publish errors"
        )
    finally:
        await pub.disconnect()
        await sub.disconnect()


async def test_jetstream_loses_none_of_10000_messages_across_a_kill(
    new_nats_server: Callable[..., NatsServer],
) -> None:
    """10,000 messages, the server killed (SIGKILL) and restarted after 3,000: every one arrives.

    The publisher retries a publish that raised, with the same Micro-Id, as a user
    would; the stream stores it once. Duplicates at the subscriber (redeliveries
    of messages handled but not yet acked at the kill) are allowed and counted.
    """
    server = new_nats_server(jetstream=True)
    total = 10_000
    options = {
        "jetstream": True,
        "reconnect_time_wait": 0.1,
        "publish_timeout": 1.0,
        "ack_wait": 2.0,
    }
    counts: Counter[int] = Counter()

    async def handler(delivery: microbroker.Delivery) -> None:
        counts[int(delivery.message.body)] += 1

    sub = NatsBroker(server.url, **options)
    pub = NatsBroker(server.url, **options)
    await sub.connect()
    await pub.connect()
    publisher = RetryingPublisher(pub, "orders.bulk")
    try:
        await sub.subscribe("orders.bulk", handler, queue="workers")
        await asyncio.gather(*publisher.start(range(3000)))
        rest = publisher.start(range(3000, total))
        await asyncio.sleep(0.05)
        await asyncio.to_thread(server.kill)
        in_flight = sum(not task.done() for task in rest)
        # Down for longer than publish_timeout, so that publishes fail and are retried.
        await asyncio.sleep(2.0)
        await asyncio.to_thread(server.start)
        await asyncio.gather(*rest)
        await eventually(lambda: len(counts) >= total, f"delivery of all {total} messages", 120)
        missing = set(range(total)) - set(counts)
        duplicates = sum(c - 1 for c in counts.values())
        print(
            f"JetStream restart: {total} published, {in_flight} unfinished at the kill "
            f"({publisher.retries} retried publishes), "
            f"{len(counts)} distinct delivered, {duplicates} duplicates"
        )
        assert in_flight > 0, "the kill must happen while messages are being published"
        assert not missing, f"{len(missing)} messages lost"
        assert sub.connected
        assert pub.connected
    finally:
        await pub.disconnect()
        await sub.disconnect()


async def test_async_acks_lose_none_of_10000_messages_across_a_kill(
    new_nats_server: Callable[..., NatsServer],
) -> None:
    """``publish_acks="async"``: the server killed (SIGKILL) with acks pending, restarted.

    Publishes in flight are sent again (same ``Nats-Msg-Id``) once the client has
    reconnected; what the broker gives up on reaches ``on_error`` and ``flush()``,
    and is published again, as a careful user does. Every one of 10,000 arrives.
    """
    server = new_nats_server(jetstream=True)
    total = 10_000
    options = {"jetstream": True, "reconnect_time_wait": 0.1, "ack_wait": 2.0}
    counts: Counter[int] = Counter()

    async def handler(delivery: microbroker.Delivery) -> None:
        counts[int(delivery.message.body)] += 1

    sub = NatsBroker(server.url, **options)
    pub = NatsBroker(server.url, publish_acks="async", publish_timeout=10.0, **options)
    await sub.connect()
    await pub.connect()
    publisher = RetryingPublisher(pub, "orders.async")
    try:
        with ErrorCatcher() as errors:
            await sub.subscribe("orders.async", handler, queue="workers")
            run = asyncio.create_task(publisher.publish_in_order(range(total)))
            await eventually(lambda: publisher.done >= 3000, "3,000 publishes")
            pending = pub.pending_acks
            await asyncio.to_thread(server.kill)
            await asyncio.sleep(1.0)  # down for a second
            await asyncio.to_thread(server.start)
            await run
            republished = 0
            for _ in range(10):
                try:
                    await pub.flush()
                    break
                except UnackedPublishes as exc:
                    for failure in exc.failures:
                        await pub.publish(failure.topic, failure.message)
                    republished += exc.count
            await eventually(lambda: len(counts) >= total, f"delivery of all {total}", 120)
            missing = set(range(total)) - set(counts)
            duplicates = sum(c - 1 for c in counts.values())
            print(
                f"JetStream async acks across a kill: {pending} acks pending at the kill, "
                f"{publisher.retries} publishes raised and retried, "
                f"{len(errors.of(UnackedPublish))} reported unacknowledged "
                f"({republished} published again), {len(counts)} distinct delivered, "
                f"{duplicates} duplicates"
            )
            assert pending > 0, "the kill must happen while acks are pending"
            assert not missing, f"{len(missing)} messages lost"
            assert pub.connected
            assert sub.connected
    finally:
        await pub.disconnect()
        await sub.disconnect()


async def test_disconnect_while_the_server_is_down_does_not_hang(
    new_nats_server: Callable[..., NatsServer],
) -> None:
    server = new_nats_server()
    broker = NatsBroker(server.url, reconnect_time_wait=0.1)
    await broker.connect()
    await broker.subscribe("down.here", lambda d: asyncio.sleep(0))
    await asyncio.to_thread(server.kill)
    await asyncio.wait_for(broker.disconnect(), 30)
    assert not broker.connected
    with pytest.raises(microbroker.NotConnected):
        await broker.publish("down.here", microbroker.Message(b"x"))


async def test_jetstream_loses_nothing_across_a_network_stall(
    new_nats_server: Callable[..., NatsServer],
) -> None:
    """The server frozen (SIGSTOP) for three seconds mid-stream, then resumed (SIGCONT).

    Publishes that time out during the stall are retried with the same Micro-Id;
    every one of 2,000 messages arrives, duplicates are counted.
    """
    server = new_nats_server(jetstream=True)
    total = 2_000
    options = {"jetstream": True, "publish_timeout": 0.5, "ack_wait": 2.0}
    counts: Counter[int] = Counter()

    async def handler(delivery: microbroker.Delivery) -> None:
        counts[int(delivery.message.body)] += 1

    sub = NatsBroker(server.url, **options)
    pub = NatsBroker(server.url, **options)
    await sub.connect()
    await pub.connect()
    publisher = RetryingPublisher(pub, "orders.stall", concurrency=16, attempts=100)
    try:
        await sub.subscribe("orders.stall", handler, queue="workers")
        tasks = publisher.start(range(total))
        await eventually(lambda: len(counts) >= 300, "deliveries before the stall")
        server.pause()
        try:
            await asyncio.sleep(3.0)
        finally:
            server.resume()
        await asyncio.gather(*tasks)
        await eventually(lambda: len(counts) >= total, f"delivery of all {total} messages", 60)
        duplicates = sum(c - 1 for c in counts.values())
        print(
            f"JetStream stall: {total} published, {publisher.retries} publishes retried, "
            f"{len(counts)} distinct delivered, {duplicates} duplicates"
        )
        assert publisher.retries > 0, "the stall must happen while messages are being published"
        assert set(counts) == set(range(total))
    finally:
        await pub.disconnect()
        await sub.disconnect()


async def test_connect_again_after_the_client_gave_up_reconnecting(
    new_nats_server: Callable[..., NatsServer],
) -> None:
    """With max_reconnect_attempts spent the connection closes for good: connected turns
    false, and connect() makes a new connection once the server is back."""
    server = new_nats_server()
    broker = NatsBroker(server.url, reconnect_time_wait=0.05, max_reconnect_attempts=1)
    await broker.connect()
    try:
        await asyncio.to_thread(server.kill)
        await eventually(lambda: not broker.connected, "the connection closed for good", 30)
        with pytest.raises(microbroker.NotConnected):
            await broker.publish("again.x", microbroker.Message(b"x"))
        await asyncio.to_thread(server.start)
        await broker.connect()
        assert broker.connected
        inbox: list[bytes] = []

        async def handler(delivery: microbroker.Delivery) -> None:
            inbox.append(delivery.message.body)

        await broker.subscribe("again.x", handler)
        await broker.publish("again.x", microbroker.Message(b"back"))
        await eventually(lambda: inbox == [b"back"], "a message on the new connection")
    finally:
        await broker.disconnect()
