"""Publishes beyond the in-flight window, on real Mosquitto servers.

Mosquitto announces ``max_inflight_messages`` as its Receive Maximum (100 in
the tests' config, 20 in a stock installation), so the broker's window is 96
or 16 publishes: anything gathered beyond that waits its turn. These tests
fire far more than that at once and check that every publish is served, in
order, and that publishes which give up waiting hand their turn on.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import Counter
from collections.abc import Callable

import pytest
from support.eventually import eventually
from support.mqtt_server import MosquittoServer

import microbroker
from microbroker_mqtt import MqttBroker


@pytest.mark.slow
@pytest.mark.parametrize("stock_limits", [False, True], ids=["test-config", "stock-limits"])
async def test_12000_qos1_publishes_at_once_on_a_broker_that_also_subscribes(
    new_mosquitto: Callable[..., MosquittoServer], stock_limits: bool
) -> None:
    """``asyncio.gather`` over 12,000 QoS 1 publishes, the subscriber on the same broker.

    This used to stall: every PUBACK woke every waiting publish, so the event loop
    spent its time re-queueing thousands of waiters, and after ``publish_timeout``
    the publishes still waiting raised ``PublishError``.
    """
    server = new_mosquitto(stock_limits=stock_limits, persistence=False)
    total = 12_000
    received: list[int] = []

    async def handler(delivery: microbroker.Delivery) -> None:
        received.append(int(delivery.message.body))

    topic = f"burst/{uuid.uuid4().hex[:8]}"
    async with MqttBroker(server.url, qos=1) as broker:
        await broker.subscribe(topic, handler)
        await asyncio.gather(
            *(broker.publish(topic, microbroker.Message(b"%d" % n)) for n in range(total))
        )
        await eventually(
            lambda: len(set(received)) >= total, f"delivery of all {total} messages", 120
        )
    counts = Counter(received)
    duplicates = sum(c - 1 for c in counts.values())
    print(
        f"{total} QoS 1 publishes at once ({'stock' if stock_limits else 'test'} Mosquitto "
        f"limits): {len(counts)} distinct delivered, {duplicates} duplicates"
    )
    assert set(counts) == set(range(total)), server.log()
    # One publisher, one subscription: waiting publishes go out in the order they were made.
    assert list(dict.fromkeys(received)) == list(range(total))


async def test_publishes_waiting_for_the_window_time_out_or_are_cancelled_and_the_window_recovers(
    new_mosquitto: Callable[..., MosquittoServer],
) -> None:
    """With the server frozen, a full window makes later publishes wait: those that time
    out or are cancelled leave, and once the server is back the whole window works again."""
    server = new_mosquitto(persistence=False)
    received: list[int] = []

    async def handler(delivery: microbroker.Delivery) -> None:
        received.append(int(delivery.message.body))

    def message(n: int) -> microbroker.Message:
        return microbroker.Message(b"%d" % n)

    topic = f"window/{uuid.uuid4().hex[:8]}"
    async with MqttBroker(server.url, max_inflight=8, publish_timeout=1.0) as broker:
        await broker.subscribe(topic, handler)
        server.pause()
        try:
            # The window (8) takes these without waiting for the frozen server...
            await asyncio.gather(*(broker.publish(topic, message(n)) for n in range(8)))
            # ...and these wait for room: four are cancelled, the rest time out.
            waiting = [asyncio.create_task(broker.publish(topic, message(n))) for n in range(8, 20)]
            await asyncio.sleep(0)  # each task runs up to its wait
            for task in waiting[:4]:
                task.cancel()
            results = await asyncio.gather(*waiting, return_exceptions=True)
        finally:
            server.resume()
        assert all(isinstance(r, asyncio.CancelledError) for r in results[:4]), results
        assert all(isinstance(r, microbroker.PublishError) for r in results[4:]), results
        assert "in-flight window" in str(results[4])
        # Every slot is free again: 200 more go through the window of 8, and the last one
        # is confirmed by the server.
        await asyncio.gather(*(broker.publish(topic, message(n)) for n in range(20, 219)))
        await broker.publish(topic, message(219), confirm=True)
        await eventually(lambda: len(set(received)) >= 208, "delivery of 208 messages")
    assert set(received) == set(range(8)) | set(range(20, 220))


async def test_publishes_waiting_for_the_window_fail_when_the_broker_disconnects(
    new_mosquitto: Callable[..., MosquittoServer], caplog: pytest.LogCaptureFixture
) -> None:
    """Publishes waiting for the window fail; those in it, unacknowledged, go with a warning."""
    server = new_mosquitto(persistence=False)
    broker = MqttBroker(server.url, max_inflight=4, publish_timeout=30.0, drain_timeout=0.5)
    await broker.connect()
    server.pause()
    try:
        await asyncio.gather(*(broker.publish("t", microbroker.Message(b"x")) for _ in range(4)))
        waiting = [
            asyncio.create_task(broker.publish("t", microbroker.Message(b"y"))) for _ in range(6)
        ]
        await asyncio.sleep(0)
        with caplog.at_level(logging.WARNING, logger="microbroker.broker.mqtt"):
            await broker.disconnect()
        results = await asyncio.gather(*waiting, return_exceptions=True)
    finally:
        server.resume()
    assert all(isinstance(r, microbroker.NotConnected) for r in results), results
    warnings = [r.getMessage() for r in caplog.records if r.name == "microbroker.broker.mqtt"]
    assert any(
        "4 publish(es) still unacknowledged" in w and "drain_timeout=0.5s" in w for w in warnings
    ), warnings
