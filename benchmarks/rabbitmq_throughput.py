"""RabbitMQ throughput: the Event API against raw aiormq and FastStream, interleaved, in one run.

    python benchmarks/rabbitmq_throughput.py [--messages 3000] [--rounds 5] [--address amqp://...]

The three variants of ``benchmarks/transports/rabbitmq.py`` (the same settings
for all: persistent, confirmed, acked after the handler, prefetch 256), one
publisher and one subscriber (or a queue group of four) in this process, at
128 B and 1 KiB, published two ways:

- ``await`` one publish at a time (each waits for its confirm): the round trip bounds it;
- ``window 64``: 64 publishes in flight, each awaiting its confirm: the CPU bounds it.

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
from transports import Variant  # noqa: E402
from transports import rabbitmq as rabbit  # noqa: E402

SIZES = {"128B": 128, "1KiB": 1024}
SHAPES = {"1->1": (1, None), "queue4": (4, "workers")}
WINDOWS = {"await": 1, "window 64": 64}


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
    transport = rabbit.transport()
    rows = []
    for window_name, window in WINDOWS.items():
        for shape, (subs, queue) in SHAPES.items():
            for size_name, size in SIZES.items():
                best: dict[str, tuple[float, float]] = {}
                for _ in range(rounds):
                    for kind, make in transport.variants.items():
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
        "| publish | shape | body | raw aiormq | microbroker Event | FastStream | vs raw "
        "| vs FastStream | CPU µs/msg raw / microbroker / FastStream |"
    )
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for window, shape, size, best in rows:
        raw, micro, fast = best["raw"], best["microbroker"], best["faststream"]
        print(
            f"| {window} | {shape} | {size} | {raw[0]:,.0f} | {micro[0]:,.0f} | {fast[0]:,.0f} "
            f"| {micro[0] / raw[0]:.2f}x | {micro[0] / fast[0]:.2f}x "
            f"| {raw[1]:.0f} / {micro[1]:.0f} / {fast[1]:.0f} |"
        )


if __name__ == "__main__":
    main()
