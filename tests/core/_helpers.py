"""Helpers shared by the core tests (a plain module: pytest puts tests/core on sys.path)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

import microbroker

# Generous bounds that only turn a hang into a clear failure; nothing is timed.
WAIT = 15.0

_addresses = itertools.count()


def new_address(prefix: str = "core") -> str:
    """A memory bus of its own: memory brokers with one address share topics process-wide."""
    return f"{prefix}-test-{next(_addresses)}"


class Inbox:
    """Records what a handler receives and lets a test wait until enough has arrived."""

    def __init__(self, on_delivery: Callable[[microbroker.Delivery], Any] | None = None) -> None:
        self.deliveries: list[microbroker.Delivery] = []
        self._changed = asyncio.Event()
        self._on_delivery = on_delivery

    async def __call__(self, delivery: microbroker.Delivery) -> None:
        self.deliveries.append(delivery)
        self._changed.set()
        if self._on_delivery is not None:
            result = self._on_delivery(delivery)
            if asyncio.iscoroutine(result):
                await result

    def add(self, item: Any) -> None:
        """Record something other than a delivery (a typed subscriber's message, say)."""
        self.deliveries.append(item)
        self._changed.set()

    @property
    def bodies(self) -> list[bytes]:
        return [d.message.body for d in self.deliveries]

    def __len__(self) -> int:
        return len(self.deliveries)

    async def wait_for(self, count: int, *, timeout: float = WAIT) -> list[Any]:
        """Wait until at least ``count`` items arrived; fail with what did arrive."""
        try:
            async with asyncio.timeout(timeout):
                while len(self.deliveries) < count:
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(
                f"expected {count} deliveries, got {len(self.deliveries)}: {self.deliveries!r}"
            ) from None
        return self.deliveries


async def wait_until(predicate: Callable[[], bool], *, timeout: float = WAIT) -> None:
    """Poll ``predicate`` on the event loop until it holds; fail after ``timeout``."""
    try:
        async with asyncio.timeout(timeout):
            while not predicate():  # noqa: ASYNC110 - the state has no event to wait on
                await asyncio.sleep(0.001)
    except TimeoutError:
        raise AssertionError(f"condition never held: {predicate}") from None


async def quiesce(rounds: int = 20) -> None:
    """Let every ready task run a few times (used before asserting that nothing more arrived)."""
    for _ in range(rounds):
        await asyncio.sleep(0)
