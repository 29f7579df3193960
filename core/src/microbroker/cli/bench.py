"""``microbroker bench``: publish-to-delivery throughput and latency on the selected broker.

One process publishes N messages of S bytes on a fresh topic and receives
them through its own subscription, so the numbers cover the whole path
(publish, transport, delivery, handler) of whatever broker is selected.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, TextIO

from .._delivery import Delivery
from .._errors import MicrobrokerError
from .._message import Message
from ._common import FAILED, OK, TIMEOUT, CliError, connected, describe, make_broker

_SEQ = "Bench-Seq"


def add_parser(commands: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = commands.add_parser(
        "bench",
        help="measure publish-to-delivery throughput and latency",
        description="Publish N messages of S bytes on a fresh topic and receive them "
        "through a subscription in the same process; report throughput and the "
        "latency from publish to delivery (p50, p90, p99, max). A progress bar goes to "
        "stderr (plain lines when stderr is not a terminal).",
    )
    parser.add_argument(
        "--messages", "-n", metavar="N", type=_at_least(1), default=10_000, help="default 10000"
    )
    parser.add_argument(
        "--size", "-s", metavar="BYTES", type=_at_least(0), default=256, help="default 256"
    )
    parser.add_argument(
        "--window",
        "-w",
        metavar="W",
        type=_at_least(1),
        default=1000,
        help="messages in flight (published, not yet delivered) at most; default 1000",
    )
    parser.add_argument("--topic", metavar="TOPIC", help="default: a fresh bench.<random> topic")
    parser.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=float,
        default=120.0,
        help="give up (exit 4) after SECONDS; default 120",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser


def _at_least(low: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text.replace("_", ""))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be {low} or more")
        return value

    return parse


@dataclass(frozen=True, slots=True)
class BenchResult:
    """What one ``bench`` run measured."""

    broker: str
    messages: int
    size: int
    seconds: float
    publish_per_second: float
    deliver_per_second: float
    megabytes_per_second: float
    latency_ms: dict[str, float]
    duplicates: int


class Progress:
    """A progress bar on a terminal; a line per quarter otherwise (logs, CI)."""

    def __init__(self, total: int, out: TextIO) -> None:
        self.total = total
        self.out = out
        self.tty = out.isatty()
        self.started = time.perf_counter()
        self._drawn = 0.0
        self._quarter = 0

    def update(self, done: int) -> None:
        now = time.perf_counter()
        if self.tty:
            if done < self.total and now - self._drawn < 0.1:
                return
            self._drawn = now
            width = 30
            filled = width * done // self.total
            rate = done / (now - self.started) if now > self.started else 0.0
            self.out.write(
                f"\r[{'#' * filled}{'.' * (width - filled)}] {100 * done // self.total:3d}% "
                f"{done}/{self.total} {rate:,.0f} msg/s"
            )
            self.out.flush()
        else:
            quarter = 4 * done // self.total
            if quarter > self._quarter:
                self._quarter = quarter
                self.out.write(f"bench: {25 * quarter}% ({done}/{self.total} delivered)\n")
                self.out.flush()

    def close(self) -> None:
        if self.tty:
            self.out.write("\n")
            self.out.flush()


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


def run(args: argparse.Namespace) -> int:
    broker = make_broker(args)
    result = asyncio.run(_bench(broker, args))
    out = sys.stdout
    if args.json:
        json.dump(asdict(result), out, indent=2)
        out.write("\n")
        return OK
    lat = result.latency_ms
    rows = [
        ("broker", result.broker),
        ("messages", f"{result.messages} x {result.size} bytes in {result.seconds:.3f} s"),
        ("publish", f"{result.publish_per_second:,.0f} msg/s"),
        (
            "deliver",
            f"{result.deliver_per_second:,.0f} msg/s ({result.megabytes_per_second:.2f} MB/s)",
        ),
        (
            "latency",
            f"p50 {lat['p50']:.3f} ms  p90 {lat['p90']:.3f} ms  "
            f"p99 {lat['p99']:.3f} ms  max {lat['max']:.3f} ms",
        ),
        ("duplicates", str(result.duplicates)),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        out.write(f"{name.ljust(width)}  {value}\n")
    return OK


async def _bench(broker: Any, args: argparse.Namespace) -> BenchResult:
    total: int = args.messages
    topic: str = args.topic or f"bench.{os.urandom(6).hex()}"
    body = os.urandom(args.size // 2 + 1).hex().encode()[: args.size]
    sent = [0.0] * total
    latency = [0.0] * total
    received = bytearray(total)
    window = asyncio.Semaphore(args.window)
    done = asyncio.Event()
    progress = Progress(total, sys.stderr)
    counts = {"delivered": 0, "duplicates": 0}
    last = [0.0]
    clock = time.perf_counter

    async def handler(delivery: Delivery) -> None:
        now = clock()
        seq = int(delivery.message.headers[_SEQ])
        if received[seq]:
            counts["duplicates"] += 1
            return
        received[seq] = 1
        latency[seq] = now - sent[seq]
        window.release()
        delivered = counts["delivered"] = counts["delivered"] + 1
        last[0] = now
        progress.update(delivered)
        if delivered == total:
            done.set()

    async with connected(broker):
        try:
            subscription = await broker.subscribe(topic, handler)
        except (MicrobrokerError, OSError) as exc:
            raise CliError(f"cannot subscribe to {topic!r}: {exc}", FAILED) from exc
        sys.stderr.write(
            f"bench: {total} messages of {args.size} bytes on {topic!r} via {describe(broker)}\n"
        )
        start = clock()
        publish = broker.publish

        async def publish_all() -> float:
            for seq in range(total):
                await window.acquire()
                sent[seq] = clock()
                await publish(topic, Message(body, {_SEQ: str(seq)}))
            return clock()

        try:
            published_at = await asyncio.wait_for(publish_all(), args.timeout)
            remaining = args.timeout - (clock() - start)
            await asyncio.wait_for(done.wait(), max(remaining, 0.001))
        except TimeoutError:
            progress.close()
            raise CliError(
                f"timed out after {args.timeout:g}s: {counts['delivered']} of {total} "
                "message(s) delivered",
                TIMEOUT,
            ) from None
        except (MicrobrokerError, OSError) as exc:
            progress.close()
            raise CliError(f"publish failed: {exc}", FAILED) from exc
        finally:
            await subscription.unsubscribe()
        progress.close()
    elapsed = last[0] - start
    ordered = sorted(latency)
    return BenchResult(
        broker=broker.name,
        messages=total,
        size=args.size,
        seconds=round(elapsed, 6),
        publish_per_second=total / max(published_at - start, 1e-9),
        deliver_per_second=total / max(elapsed, 1e-9),
        megabytes_per_second=total * args.size / max(elapsed, 1e-9) / 1e6,
        latency_ms={
            "p50": percentile(ordered, 0.50) * 1e3,
            "p90": percentile(ordered, 0.90) * 1e3,
            "p99": percentile(ordered, 0.99) * 1e3,
            "max": ordered[-1] * 1e3,
        },
        duplicates=counts["duplicates"],
    )
