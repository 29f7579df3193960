"""One case of one variant in this process, for a profiler (callgrind, cProfile, py-spy).

    python benchmarks/one_case.py redis microbroker --address redis://127.0.0.1:PORT \\
        [--messages 2000] [--shape 1->1] [--size 128]

Opens the variant of ``benchmarks/transports/<transport>.py``, subscribes as
the shape asks, publishes 100 messages to warm up, then ``messages`` one
awaited at a time, waits until all are delivered and closes. The server is
the one at ``--address`` (start it outside the profiled process). Instructions
per message: run twice under ``valgrind --tool=callgrind`` with two counts and
divide the difference of the totals by the difference of the counts, so that
start-up and the imports cancel out.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

from harness import Counter  # noqa: E402
from run import SHAPES, body_of  # noqa: E402


class Address:
    """The server as the transports' variants read it: ``url`` (most), ``address`` (kafka)."""

    def __init__(self, url: str) -> None:
        self.url = self.address = url


async def main_async(args: argparse.Namespace) -> None:
    module = importlib.import_module(f"transports.{args.transport}")
    transport = module.transport()
    variant = transport.variants[args.variant](Address(args.address))
    subs, queue = SHAPES[args.shape]
    tag = uuid.uuid4().hex[:8]
    topic = variant.separator.join(("bench", tag))
    queue = f"{queue}-{tag}" if queue else None
    per_message = 1 if queue else subs
    state = {"c": Counter(100 * per_message)}

    def hit() -> None:
        state["c"].hit()

    await variant.open()
    try:
        for _ in range(subs):
            await variant.subscribe(topic, queue, hit)
        await variant.ready()
        publish = variant.publisher(topic, body_of(args.size))
        for _ in range(100):
            await publish()
        await state["c"].wait(60)
        counter = state["c"] = Counter(args.messages * per_message)
        wall, cpu, loop_cpu = time.perf_counter(), time.process_time(), time.thread_time()
        for _ in range(args.messages):
            await publish()
        await counter.wait(600)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        loop_cpu = time.thread_time() - loop_cpu
        # The loop's thread bounds a client whose C threads do the I/O (librdkafka's).
        print(
            f"{args.transport} {args.variant} {args.shape} {args.size} B: "
            f"{args.messages / wall:,.0f} msg/s, {cpu / args.messages * 1e6:.1f} us CPU/msg, "
            f"{loop_cpu / args.messages * 1e6:.1f} us of it in the loop's thread",
            file=sys.stderr,
        )
    finally:
        await variant.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("transport")
    parser.add_argument("variant")
    parser.add_argument("--address", required=True)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--shape", default="1->1", choices=tuple(SHAPES))
    parser.add_argument("--size", type=int, default=128)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
