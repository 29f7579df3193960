"""Small helpers shared by the nats tests."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from nats.aio.client import Client
from support.eventually import eventually

from microbroker import Delivery
from microbroker_nats._client import round_trip

__all__ = ["Recorder", "eventually", "eventually_async", "synced"]


async def eventually_async(
    predicate: Callable[[], Awaitable[bool]], what: str, timeout: float = 20.0
) -> None:
    """:func:`eventually` for a condition that must ask the server (a consumer's info)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await predicate():
        if loop.time() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout}s")
        await asyncio.sleep(0.05)


async def synced(nc: Client) -> None:
    """Wait until the server has processed everything ``nc`` has sent (a SUB, PUBs).

    ``await nc.flush()`` alone does not: nats-py writes its PING ahead of them.
    """
    await round_trip(nc, 5.0)


class Recorder:
    """A broker handler that records what it is given."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []

    async def __call__(self, delivery: Delivery) -> None:
        self.deliveries.append(delivery)

    @property
    def bodies(self) -> list[bytes]:
        return [d.message.body for d in self.deliveries]

    def __len__(self) -> int:
        return len(self.deliveries)
