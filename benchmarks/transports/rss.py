"""RSS over a long run, in a process of its own: ``python rss.py memory|nats MESSAGES``.

Publishes MESSAGES typed events (128 B protobuf bodies) through the Event API
to one typed subscriber, in batches that wait for delivery, and samples the
resident set size. Prints one JSON line: RSS after warm-up, peak, end, growth.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[0:1] = [str(HERE.parent), str(HERE.parent.parent / "tests")]  # not transports/

from google.protobuf.wrappers_pb2 import BytesValue  # noqa: E402

import microbroker  # noqa: E402


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def main(kind: str, messages: int) -> dict[str, float]:
    import contextlib

    from microbroker.brokers.memory import MemoryBroker

    stack = contextlib.ExitStack()
    if kind == "nats":
        from support.nats_server import NatsServer

        from microbroker_nats import NatsBroker

        server = stack.enter_context(NatsServer())

        def make() -> microbroker.Broker:
            return NatsBroker(server.url)
    else:

        def make() -> microbroker.Broker:
            return MemoryBroker("bench-rss", max_pending=100_000)

    with stack:
        pub = microbroker.Service("rss-pub", broker=make())
        sub = microbroker.Service("rss-sub", broker=make())
        count = 0
        target = 0
        done = asyncio.Event()

        @sub.subscriber("bench.rss")
        async def on_event(msg: BytesValue) -> None:
            nonlocal count
            count += 1
            if count >= target:
                done.set()

        await pub.start()
        await sub.start()
        flush = getattr(getattr(sub.broker, "client", None), "flush", None)
        if flush is not None:
            await flush()  # the subscription is at the server before the first publish
        event = pub.event("bench.rss")
        value = BytesValue(value=b"x" * 124)
        batch = 10_000

        async def send(n: int) -> None:
            nonlocal target
            target = count + n
            done.clear()
            for _ in range(n):
                await event.publish(value)
            await asyncio.wait_for(done.wait(), 60)

        await send(batch)  # warm up
        start = peak = rss_mb()
        sent = 0
        while sent < messages:
            await send(batch)
            sent += batch
            peak = max(peak, rss_mb())
        end = rss_mb()
        await sub.stop()
        await pub.stop()
    return {
        "start_mb": start,
        "peak_mb": peak,
        "end_mb": end,
        "growth_mb": end - start,
        "peak_growth_mb": peak - start,
        "messages": float(sent),
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], int(sys.argv[2])))))
