"""The event loop's lag while microbroker-kafka moves 100,000 messages, per client.

A ticker task asks to wake every millisecond and records how late it wakes
(``loop.time()`` against the time asked for): what any other task of the
service (a health check, an RPC handler) would wait on top of its own work.
Each run publishes ``--messages`` messages of ``--size`` bytes with
``confirm=False`` through one broker (yielding to the loop every 100
publishes, then disconnecting, which waits for them to be stored), and then
receives them through a second one (a queue group on a topic of four
partitions, from the earliest offset), against a tansu started here; it
reports the lag's mean, p99 and max in each phase, for ``client="aiokafka"``
and ``client="confluent"``. The subscription starts after the publishing
(its group join is done before the ticker starts): the receiving phase is
the fetch loop and the deliveries alone.

Run: ``python benchmarks/kafka_loop_lag.py`` (in the ``kafka`` or ``bench`` tox env).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from support.kafka_server import KafkaServer  # noqa: E402

from microbroker import Delivery, Message  # noqa: E402
from microbroker_kafka import KafkaBroker  # noqa: E402

TICK = 0.001


async def ticker(lateness: list[float], stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        due = loop.time() + TICK
        await asyncio.sleep(TICK)
        lateness.append(loop.time() - due)


def summary(lateness: list[float], count: int, seconds: float) -> dict[str, float]:
    lateness = sorted(lateness)
    return {
        "msg/s": count / seconds,
        "ticks": len(lateness),
        "mean ms": statistics.fmean(lateness) * 1000,
        "p99 ms": lateness[int(len(lateness) * 0.99)] * 1000,
        "max ms": lateness[-1] * 1000,
    }


async def measured(work: Awaitable[None], count: int) -> dict[str, float]:
    lateness: list[float] = []
    stop = asyncio.Event()
    tick = asyncio.create_task(ticker(lateness, stop))
    started = time.perf_counter()
    await work
    seconds = time.perf_counter() - started
    stop.set()
    await tick
    return summary(lateness, count, seconds)


async def run(address: str, client: str, total: int, size: int) -> dict[str, dict[str, float]]:
    """Publishing alone (yielding every 100 publishes), then receiving alone."""
    topic, group = f"lag.{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    message = Message(b"x" * size)
    received = 0
    done = asyncio.Event()

    async def handler(delivery: Delivery) -> None:
        nonlocal received
        received += 1
        if received >= total:
            done.set()

    async def publish_all(pub: KafkaBroker) -> None:
        for n in range(total):
            await pub.publish(topic, message)
            if n % 100 == 99:
                await asyncio.sleep(0)  # a service's publisher lets the others run
        await pub.disconnect()  # what is buffered: sent and confirmed

    async def receive_all() -> None:
        await asyncio.wait_for(done.wait(), 300)

    options = {"client": client, "confirm": False, "offset_reset": "earliest"}
    pub = KafkaBroker(address, **options)
    await pub.connect()
    published = await measured(publish_all(pub), total)
    async with KafkaBroker(address, **options) as sub:
        # The group starts at the earliest offset: the whole topic is there to read.
        await sub.subscribe(topic, handler, queue=group)
        consumed = await measured(receive_all(), total)
    return {"publish": published, "receive": consumed}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--clients", default="aiokafka,confluent")
    args = parser.parse_args()
    with KafkaServer(name="tansu-lag") as server:
        for client in args.clients.split(","):
            for phase, result in (
                await run(server.address, client, args.messages, args.size)
            ).items():
                print(
                    f"{client:9} {phase:7} {args.messages} x {args.size} B: "
                    f"{result['msg/s']:>9,.0f} msg/s; "
                    f"loop lag over {result['ticks']:.0f} ticks of {TICK * 1000:g} ms: mean "
                    f"{result['mean ms']:.2f} ms, p99 {result['p99 ms']:.2f} ms, "
                    f"max {result['max ms']:.1f} ms",
                    flush=True,
                )


if __name__ == "__main__":
    asyncio.run(main())
