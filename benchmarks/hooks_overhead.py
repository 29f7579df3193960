"""What the event hooks cost on the hot path: publish -> deliver on the memory broker.

Cases, 1 publisher -> 1 subscriber, 128-byte bodies:

- ``memory/no-hooks``: no plugin implements an event hook (the default). The
  broker must run its own ``publish``/``subscribe``, with no wrapper at all.
- ``memory/noop-hooks``: a plugin with a no-op ``on_publish`` and ``on_deliver``
  is registered; every publish and delivery goes through pluggy once.
- ``asyncio.Queue``: a plain queue and one consumer task calling the same
  kind of handler: the floor any in-process broker is compared with.

Each case runs ``--rounds`` times, interleaved, and the best round is kept.
Run: ``python benchmarks/hooks_overhead.py [--messages N] [--rounds R]``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable

from harness import Counter, Result, ratio_table, save

import microbroker
from microbroker import Delivery, Message
from microbroker._plugins import registry

BODY = bytes(128)
SHAPE = "1->1 128B"
_buses = itertools.count()


class NoopHooks:
    """An event-hook plugin that does nothing: the cost is the hook machinery itself."""

    @microbroker.hookimpl
    def on_publish(self, broker: microbroker.Broker, topic: str, message: Message) -> None:
        pass

    @microbroker.hookimpl
    def on_deliver(self, broker: microbroker.Broker, delivery: Delivery) -> None:
        pass


async def run_broker(messages: int) -> None:
    """Publish ``messages`` on a fresh memory broker and wait until all are delivered."""
    counter = Counter(messages)

    async def handler(delivery: Delivery) -> None:
        counter.hit()

    async with microbroker.get_broker("memory", address=f"bench-{next(_buses)}") as broker:
        await broker.subscribe("bench", handler)
        publish = broker.publish
        for _ in range(messages):
            await publish("bench", Message(BODY, {}))
        await counter.wait(120)


async def run_queue(messages: int) -> None:
    """The same traffic through a bare asyncio.Queue and one consumer task."""
    counter = Counter(messages)
    queue: asyncio.Queue[Message] = asyncio.Queue(maxsize=10_000)

    async def handler(delivery: Delivery) -> None:
        counter.hit()

    async def consume() -> None:
        while True:
            message = await queue.get()
            await handler(Delivery("bench", message))

    consumer = asyncio.get_running_loop().create_task(consume())
    for _ in range(messages):
        await queue.put(Message(BODY, {}))
    await counter.wait(120)
    consumer.cancel()


async def timed(run_once: Callable[[int], Awaitable[None]], messages: int) -> float:
    start = time.perf_counter()
    await run_once(messages)
    return time.perf_counter() - start


async def main(messages: int, rounds: int) -> list[Result]:
    if registry().has_event_hooks:
        raise SystemExit("an installed plugin implements event hooks: case (a) cannot be measured")
    best: dict[str, float] = {}

    def keep(name: str, seconds: float) -> None:
        best[name] = min(best.get(name, float("inf")), seconds)

    await run_broker(1000)  # warm up imports and the registry
    for _ in range(rounds):
        keep("memory/no-hooks", await timed(run_broker, messages))
        name = microbroker.register_plugin(NoopHooks(), "bench-noop-hooks")
        try:
            keep("memory/noop-hooks", await timed(run_broker, messages))
        finally:
            microbroker.unregister_plugin(name)
        keep("asyncio.Queue", await timed(run_queue, messages))
    return [Result(name, SHAPE, messages, seconds) for name, seconds in best.items()]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    results = asyncio.run(main(args.messages, args.rounds))
    print(ratio_table(results, "memory/no-hooks", "Event hook overhead, memory broker"))
    print(f"\nsaved {save('hooks_overhead', results)}")
