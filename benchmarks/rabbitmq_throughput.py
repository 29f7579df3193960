"""RabbitMQ throughput: the Event API against raw aiormq and FastStream, interleaved, in one run.

    python benchmarks/rabbitmq_throughput.py [--messages 3000] [--rounds 5] [--address amqp://...]

The three variants of ``benchmarks/transports/rabbitmq.py`` (the same settings
for all: persistent, confirmed, acked after the handler, prefetch 256), one
publisher and one subscriber (or a queue group of four) in this process, at
128 B and 1 KiB, published two ways:

- ``await`` one publish at a time (each waits for its confirm): the round trip bounds it;
- ``window 64``: 64 publishes in flight, each awaiting its confirm: the CPU bounds it.

Besides the three variants, ``broker`` is the broker level: ``RabbitMQBroker.publish``
of the serialized body with the four headers an Event carries, to a handler that
counts (auto-acked): the plugin's own cost, without the Event layer's.

Each round measures every variant once, in turn, so that a shared machine's
noise falls on all of them alike; the best of ``rounds`` is kept, with this
process's CPU time per delivered message. Targets: microbroker >= 0.8x raw and
>= 2x FastStream.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

from google.protobuf.wrappers_pb2 import BytesValue  # noqa: E402
from transports import Hit, Publish, Variant  # noqa: E402
from transports import rabbitmq as rabbit  # noqa: E402

import microbroker  # noqa: E402
from microbroker_rabbitmq import RabbitMQBroker  # noqa: E402

SIZES = {"128B": 128, "1KiB": 1024}
SHAPES = {"1->1": (1, None), "queue4": (4, "workers")}
WINDOWS = {"await": 1, "window 64": 64}


class BrokerLevel(Variant):
    """``RabbitMQBroker.publish(topic, Message(body, headers))`` to a counting handler."""

    kind = "broker"

    def __init__(self, url: str) -> None:
        self.url = url

    async def open(self) -> None:
        self.pub = RabbitMQBroker(self.url, exchange=rabbit.EXCHANGE, prefetch=rabbit.PREFETCH)
        self.sub = RabbitMQBroker(self.url, exchange=rabbit.EXCHANGE, prefetch=rabbit.PREFETCH)
        await self.pub.connect()
        await self.sub.connect()

    async def subscribe(self, topic: str, queue: str | None, hit: Hit) -> None:
        async def handler(delivery: microbroker.Delivery) -> None:
            delivery.body  # noqa: B018 (what a handler reads)
            hit()

        await self.sub.subscribe(topic, handler, queue=queue)

    def publisher(self, topic: str, body: bytes) -> Publish:
        publish = self.pub.publish

        async def send() -> None:
            headers = {
                "Micro-ID": uuid.uuid4().hex,
                "Content-Type": "application/protobuf",
                "Micro-Topic": topic,
                "Micro-From-Service": "bench",
            }
            await publish(topic, microbroker.Message(body, headers))

        return send

    async def close(self) -> None:
        await self.pub.disconnect()
        await self.sub.disconnect()


def body_of(size: int) -> bytes:
    return BytesValue(value=os.urandom(size - 3 if size < 130 else size - 4)).SerializeToString()


async def once(
    variant: Variant, size: int, subs: int, queue: str | None, n: int, window: int
) -> tuple[float, float]:
    tag = uuid.uuid4().hex[:8]
    topic = f"bench.{tag}"
    queue = f"{queue}-{tag}" if queue else None
    got = 0
    done = asyncio.Event()
    target = n + 50

    def hit() -> None:
        nonlocal got
        got += 1
        if got >= target:
            done.set()

    await variant.open()
    try:
        for _ in range(subs):
            await variant.subscribe(topic, queue, hit)
        await variant.ready()
        publish = variant.publisher(topic, body_of(size))
        for _ in range(50):  # warm up
            await publish()
        slots = asyncio.Semaphore(window)

        async def one() -> None:
            async with slots:
                await publish()

        wall, cpu = time.perf_counter(), time.process_time()
        if window == 1:
            for _ in range(n):
                await publish()
        else:
            await asyncio.gather(*(one() for _ in range(n)))
        await asyncio.wait_for(done.wait(), 120)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        return n / wall, cpu / n * 1e6
    finally:
        await variant.close()


@contextlib.contextmanager
def server(address: str | None) -> Iterator[Any]:
    if address:

        class Given:
            url = address

        yield Given()
        return
    from support.rabbitmq_server import RabbitMQServer

    with RabbitMQServer(name="bench-throughput") as rabbitmq:
        yield rabbitmq


async def run(srv: Any, n: int, rounds: int) -> list[tuple[str, str, str, dict[str, Any]]]:
    variants = dict(rabbit.transport().variants)
    variants["broker"] = lambda server: BrokerLevel(str(server.url))
    rows = []
    for window_name, window in WINDOWS.items():
        for shape, (subs, queue) in SHAPES.items():
            for size_name, size in SIZES.items():
                best: dict[str, tuple[float, float]] = {}
                for _ in range(rounds):
                    for kind, make in variants.items():
                        rate, cpu = await once(make(srv), size, subs, queue, n, window)
                        if kind not in best or rate > best[kind][0]:
                            best[kind] = (rate, cpu)
                rows.append((window_name, shape, size_name, best))
                line = "  ".join(f"{k} {r:,.0f}/s {c:.0f}us" for k, (r, c) in best.items())
                print(f"{window_name:9} {shape:6} {size_name:5} {line}", file=sys.stderr)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--address", help="an AMQP URL; default: start a server of our own")
    args = parser.parse_args()
    with server(args.address) as srv:
        rows = asyncio.run(run(srv, args.messages, args.rounds))
    print(f"\n{args.messages} messages a case, best of {args.rounds} interleaved rounds\n")
    print(
        "| publish | shape | body | raw aiormq | broker | Event API | FastStream | Event vs raw "
        "| Event vs FastStream | CPU µs/msg: raw / broker / Event / FastStream |"
    )
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for window, shape, size, best in rows:
        raw, broker = best["raw"], best["broker"]
        micro, fast = best["microbroker"], best["faststream"]
        print(
            f"| {window} | {shape} | {size} | {raw[0]:,.0f} | {broker[0]:,.0f} | {micro[0]:,.0f} "
            f"| {fast[0]:,.0f} | {micro[0] / raw[0]:.2f}x | {micro[0] / fast[0]:.2f}x "
            f"| {raw[1]:.0f} / {broker[1]:.0f} / {micro[1]:.0f} / {fast[1]:.0f} |"
        )


if __name__ == "__main__":
    main()
