"""max_concurrency: handlers run side by side up to the limit, and no further."""

from __future__ import annotations

import asyncio
import itertools

import pytest

import microbroker
from microbroker.brokers.memory import MemoryBroker

_bus = itertools.count()


@pytest.mark.parametrize("limit", [1, 4])
async def test_no_more_handlers_run_at_once_than_the_limit(limit: int) -> None:
    service = microbroker.Service("conc", broker=MemoryBroker(f"conc-{next(_bus)}"))
    running = 0
    peak = 0
    handled: list[int] = []

    @service.subscriber("jobs", max_concurrency=limit)
    async def on_job(msg: dict[str, int]) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.02)
        running -= 1
        handled.append(msg["n"])

    async with service:
        for n in range(20):
            await service.event("jobs").publish({"n": n})
        for _ in range(500):
            if len(handled) == 20:
                break
            await asyncio.sleep(0.01)
    assert sorted(handled) == list(range(20))
    assert peak == limit, f"{peak} handlers ran at once with max_concurrency={limit}"
    if limit == 1:
        assert handled == list(range(20)), "one at a time keeps the order"


async def test_concurrent_handlers_are_acked_only_when_they_finish() -> None:
    broker = MemoryBroker(f"conc-{next(_bus)}")
    service = microbroker.Service("conc", broker=broker)
    attempts: dict[int, int] = {}

    @service.subscriber("jobs", max_concurrency=3)
    async def on_job(msg: dict[str, int]) -> None:
        attempts[msg["n"]] = attempts.get(msg["n"], 0) + 1
        await asyncio.sleep(0.01)
        if msg["n"] % 2 and attempts[msg["n"]] == 1:
            raise RuntimeError("odd jobs fail once")

    async with service:
        for n in range(6):
            await service.event("jobs").publish({"n": n})
        for _ in range(300):
            if len(attempts) == 6 and all(attempts[n] == 2 for n in (1, 3, 5)):
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
    assert attempts == {0: 1, 1: 2, 2: 1, 3: 2, 4: 1, 5: 2}, (
        "a failure in a concurrent handler is a nack (redelivered once), a success an ack"
    )


def test_max_concurrency_must_be_positive() -> None:
    service = microbroker.Service("conc", broker=MemoryBroker("conc-invalid"))

    async def handler(msg: dict[str, int]) -> None:
        return None

    with pytest.raises(ValueError, match="max_concurrency"):
        service.server.new_subscriber("jobs", handler, max_concurrency=0)
