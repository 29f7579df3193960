"""Shared measuring code for the benchmarks: one publisher, N receivers, messages per second.

Every benchmark measures microbroker and the raw client library in the same
run, so that the ratio between them means something on a shared, noisy
machine. Each case is run ``repeat`` times and the best run is kept (the
least disturbed by other work on the machine).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import socket
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import api_pb2

import microbroker

RESULTS = Path(__file__).parent / "results"
HOST = "127.0.0.1"

#: Publishes ``n`` messages and returns once all of them were delivered.
RunOnce = Callable[[int], Awaitable[None]]


@dataclass
class Result:
    """One measured case."""

    name: str
    """What was measured, e.g. ``nats/event-protobuf``."""
    shape: str
    """e.g. ``1->1 128B``."""
    messages: int
    seconds: float
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0


class Counter:
    """Counts deliveries and wakes the measuring task when ``expected`` have arrived."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.count = 0
        self.done = asyncio.Event()

    def hit(self, n: int = 1) -> None:
        self.count += n
        if self.count >= self.expected:
            self.done.set()

    async def wait(self, seconds: float) -> None:
        await asyncio.wait_for(self.done.wait(), seconds)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def server_process(
    argv: Sequence[str], port: int, what: str, *, cwd: str | Path | None = None
) -> Iterator[None]:
    """Run a server of our own until the block ends; ready once ``port`` accepts connections."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=cwd)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex((HOST, port)) == 0:
                    break
            time.sleep(0.05)
        else:
            raise RuntimeError(f"{what} did not start")
        yield
    finally:
        proc.terminate()
        proc.wait(10)


def sample() -> api_pb2.Method:
    """The protobuf body every throughput benchmark publishes."""
    return api_pb2.Method(
        name="OrderCreated",
        request_type_url="type.googleapis.com/shop.v1.OrderCreatedRequest",
        response_type_url="type.googleapis.com/shop.v1.Order",
        request_streaming=False,
    )


async def event_case(
    pub_broker: microbroker.Broker,
    sub_broker: microbroker.Broker,
    topic_prefix: str,
    *,
    settle: Callable[[], Awaitable[Any]] | None = None,
) -> tuple[RunOnce, Callable[[], Awaitable[None]]]:
    """The typed Event API: ``sample()`` published by one Service, decoded by another's subscriber.

    ``settle`` (optional) runs once both services started, before the first run.
    """
    publisher = microbroker.Service("bench-publisher", broker=pub_broker)
    subscriber = microbroker.Service("bench-subscriber", broker=sub_broker)
    topic = f"{topic_prefix}{uuid.uuid4().hex[:8]}"
    state: dict[str, Counter] = {}

    @subscriber.subscriber(topic)
    async def on_event(msg: api_pb2.Method, ctx: microbroker.Context) -> None:
        state["counter"].hit()

    await publisher.start()
    await subscriber.start()
    if settle is not None:
        await settle()
    event = publisher.event(topic)
    value = sample()

    async def run_once(n: int) -> None:
        counter = state["counter"] = Counter(n)
        publish = event.publish
        for _ in range(n):
            await publish(value)
        await counter.wait(120)

    async def close() -> None:
        await subscriber.stop()
        await publisher.stop()

    return run_once, close


async def measure(
    name: str,
    shape: str,
    messages: int,
    run_once: Callable[[int], Awaitable[None]],
    *,
    repeat: int = 3,
) -> Result:
    """Time ``run_once(messages)`` ``repeat`` times and keep the best run.

    ``run_once`` publishes every message and returns once all are delivered.
    """
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        await run_once(messages)
        best = min(best, time.perf_counter() - start)
    return Result(name, shape, messages, best)


def ratio_table(results: list[Result], baseline: str, title: str) -> str:
    """A markdown table of rates, each with its ratio to ``baseline`` in the same shape."""
    base = {r.shape: r.rate for r in results if r.name == baseline}
    lines = [
        f"### {title}",
        "",
        "| case | shape | msg/s | ratio to " + baseline + " |",
        "| --- | --- | ---: | ---: |",
    ]
    for r in results:
        ref = base.get(r.shape)
        ratio = f"{r.rate / ref:.2f}x" if ref else "-"
        lines.append(f"| {r.name} | {r.shape} | {r.rate:,.0f} | {ratio} |")
    return "\n".join(lines)


def machine() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": str(os.cpu_count()),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def save(name: str, results: list[Result]) -> Path:
    """Write ``results/<name>.json`` (rates included) and return its path."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {
        "machine": machine(),
        "results": [asdict(r) | {"rate": r.rate} for r in results],
    }
    path.write_text(json.dumps(payload, indent=2))
    return path
