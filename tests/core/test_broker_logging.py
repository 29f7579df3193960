"""What every broker logs on ``microbroker.broker.<name>``, through the toolkit itself.

INFO when it connects, subscribes and disconnects; DEBUG for each delivery and
how it was settled, for subscriptions made while DEBUG is on (and nothing at
all, not even a wrapper, when it is off).
"""

from __future__ import annotations

import asyncio
import logging

import pytest

import microbroker
from microbroker.brokers.memory import MemoryBroker

LOGGER = "microbroker.broker.memory"


def lines(caplog: pytest.LogCaptureFixture, level: int | None = None) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == LOGGER and (level is None or r.levelno == level)
    ]


async def test_connect_subscribe_and_disconnect_are_info_lines(
    address: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    broker = MemoryBroker(address)  # made directly, not through get_broker: the same lines
    await broker.connect()
    await broker.connect()  # connected already: nothing more
    await broker.subscribe("orders", _ack, queue="billing")
    await broker.subscribe("audit", _ack)
    await broker.disconnect()
    await broker.disconnect()
    assert lines(caplog) == [
        f"connected to {address}",
        "subscribed to 'orders' in queue group 'billing'",
        "subscribed to 'audit'",
        f"disconnected from {address}",
    ]
    assert lines(caplog, logging.DEBUG) == []


async def test_a_transport_calling_its_parents_connect_is_logged_once(
    address: str, caplog: pytest.LogCaptureFixture
) -> None:
    class Wrapped(MemoryBroker):
        async def connect(self) -> None:
            await super().connect()

        async def disconnect(self) -> None:
            await super().disconnect()

    caplog.set_level(logging.INFO, logger=LOGGER)
    async with Wrapped(address):
        pass
    assert lines(caplog) == [f"connected to {address}", f"disconnected from {address}"]


async def test_each_delivery_and_its_settlement_are_debug_lines(
    address: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    seen = asyncio.Event()
    attempts = 0

    async def fails_once(delivery: microbroker.Delivery) -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise RuntimeError("once")
        seen.set()

    async with microbroker.get_broker("memory", address=address) as broker:
        policy = microbroker.RetryPolicy(max_attempts=2, backoff=0.01)
        await broker.subscribe("orders", fails_once, queue="billing", retry=policy)
        await broker.publish("orders", microbroker.Message(b"12345"))
        await asyncio.wait_for(seen.wait(), 10)
        await asyncio.sleep(0.05)
    assert lines(caplog, logging.DEBUG) == [
        "delivery on 'orders' (queue 'billing'): attempt 1, 5 bytes",
        "delivery on 'orders', attempt 1: nacked",
        "delivery on 'orders' (queue 'billing'): attempt 2, 5 bytes",
        "delivery on 'orders', attempt 2: acked",
    ]


async def test_no_debug_line_and_no_wrapper_when_debug_is_off(
    address: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    got = asyncio.Event()

    async def handler(delivery: microbroker.Delivery) -> None:
        got.set()

    async with MemoryBroker(address) as broker:
        await broker.subscribe("orders", handler)
        # DEBUG switched on after subscribing: the subscription was made without it.
        caplog.set_level(logging.DEBUG, logger=LOGGER)
        await broker.publish("orders", microbroker.Message(b"x"))
        await asyncio.wait_for(got.wait(), 10)
    assert lines(caplog, logging.DEBUG) == []


async def _ack(delivery: microbroker.Delivery) -> None:
    pass
