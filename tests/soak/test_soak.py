"""A million messages per transport, and what the process holds at the start and at the end.

Not part of CI (``tox -e soak``): each case publishes ``MICRO_SOAK_MESSAGES``
(default 1,000,000) typed Events to a queue-group subscriber in the same
process, over the transport's real server, and compares the process's
resident memory, open file descriptors and asyncio tasks after a warm-up with
those at the end. A growth beyond the bounds below fails the case: a leak per
message (a future, a task, a buffer) shows within a million. Nothing is lost
on an at-least-once transport; an at-most-once one reports what it lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

import microbroker

MESSAGES = int(os.environ.get("MICRO_SOAK_MESSAGES", "1000000"))
WARM_UP = min(50_000, MESSAGES // 10)
IN_FLIGHT = 256

#: The bounds, from the warm-up to the end.
RSS_GROWTH = 64 * 1024 * 1024
FD_GROWTH = 8
TASK_GROWTH = 4


@dataclass
class Tick:
    n: int
    note: str


def rss() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@dataclass
class Sample:
    rss: int
    fds: int
    tasks: int

    @classmethod
    def now(cls) -> Sample:
        gc.collect()
        return cls(rss(), open_fds(), len(asyncio.all_tasks()))


def _memory() -> contextlib.AbstractContextManager[Callable[[], microbroker.Broker]]:
    return contextlib.nullcontext(lambda: microbroker.get_broker("memory", address="soak"))


@contextlib.contextmanager
def _http() -> Iterator[Callable[[], microbroker.Broker]]:
    from microbroker.registries.memory import MemoryRegistry

    registry = MemoryRegistry("soak")
    yield lambda: microbroker.get_broker("http", registry=registry)


@contextlib.contextmanager
def _nats(jetstream: bool) -> Iterator[Callable[[], microbroker.Broker]]:
    from support.nats_server import NatsServer

    with NatsServer(jetstream=jetstream, name="soak-nats") as server:
        yield lambda: microbroker.get_broker("nats", address=server.url, jetstream=jetstream)


@contextlib.contextmanager
def _mqtt() -> Iterator[Callable[[], microbroker.Broker]]:
    from support.mqtt_server import MosquittoServer

    with MosquittoServer(name="soak-mosquitto") as server:
        yield lambda: microbroker.get_broker("mqtt", address=server.url)


@contextlib.contextmanager
def _kafka() -> Iterator[Callable[[], microbroker.Broker]]:
    from support.kafka_server import KafkaServer

    with KafkaServer(name="soak-tansu") as server:
        yield lambda: microbroker.get_broker("kafka", address=server.address)


@contextlib.contextmanager
def _rabbitmq() -> Iterator[Callable[[], microbroker.Broker]]:
    from support.rabbitmq_server import RabbitMQServer

    with RabbitMQServer(name="soak-rabbitmq") as server:
        yield lambda: microbroker.get_broker("rabbitmq", address=server.url)


@contextlib.contextmanager
def _redis() -> Iterator[Callable[[], microbroker.Broker]]:
    from support.redis_server import RedisServer

    server = RedisServer(name="soak-redis")
    server.start()
    try:
        # Streams, the default mode: at least once.
        yield lambda: microbroker.get_broker("redis", address=server.url)
    finally:
        server.close()


TRANSPORTS: dict[str, tuple[Callable[[], Any], bool]] = {
    # name: (the broker factory's context, whether delivery is at least once)
    "memory": (_memory, True),
    "http": (_http, True),
    "nats": (lambda: _nats(False), False),
    "jetstream": (lambda: _nats(True), True),
    "mqtt": (_mqtt, True),
    "kafka": (_kafka, True),
    "rabbitmq": (_rabbitmq, True),
    "redis": (_redis, True),
}


async def _soak(factory: Callable[[], microbroker.Broker], at_least_once: bool) -> dict[str, Any]:
    publisher = microbroker.Service("soak-publisher", broker=factory())
    subscriber = microbroker.Service("soak-subscriber", broker=factory())
    seen = bytearray(MESSAGES)
    received = 0
    done = asyncio.Event()
    warmed = asyncio.Event()
    topic = f"soak.{os.getpid()}.{time.monotonic_ns()}"

    @subscriber.subscriber(topic, queue="soak")
    async def on_tick(tick: Tick) -> None:
        nonlocal received
        if not seen[tick.n]:
            seen[tick.n] = 1
            received += 1
            if received >= WARM_UP * 0.9:
                warmed.set()
            if received == MESSAGES:
                done.set()

    async with subscriber, publisher:
        event = publisher.event(topic)
        slots = asyncio.Semaphore(IN_FLIGHT)
        failures: list[BaseException] = []

        async def send(n: int) -> None:
            try:
                await event.publish(Tick(n, "x" * 100))
            except Exception as exc:  # counted; at-least-once transports must have none
                failures.append(exc)
            finally:
                slots.release()

        tasks: set[asyncio.Task[None]] = set()
        started = time.monotonic()
        warm: Sample | None = None
        for n in range(MESSAGES):
            if n == WARM_UP:
                await asyncio.wait_for(warmed.wait(), 600)
                warm = Sample.now()
            await slots.acquire()
            task = asyncio.ensure_future(send(n))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), 120 if at_least_once else 10)
        elapsed = time.monotonic() - started
        end = Sample.now()
    assert warm is not None
    return {
        "received": received,
        "failed_publishes": len(failures),
        "seconds": elapsed,
        "warm": warm,
        "end": end,
    }


@pytest.mark.parametrize("name", list(TRANSPORTS))
def test_a_million_messages_leave_nothing_behind(name: str) -> None:
    make, at_least_once = TRANSPORTS[name]
    try:
        context = make()
        factory = context.__enter__()
    except Exception as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"{name}: {exc}")
    try:
        result = asyncio.run(_soak(factory, at_least_once))
    finally:
        context.__exit__(None, None, None)
    warm, end = result["warm"], result["end"]
    lost = MESSAGES - result["received"]
    print(
        f"\n{name}: {MESSAGES:,} messages in {result['seconds']:.0f} s "
        f"({MESSAGES / result['seconds']:,.0f}/s); lost {lost:,}; "
        f"failed publishes {result['failed_publishes']:,}\n"
        f"  RSS {warm.rss / 2**20:.1f} -> {end.rss / 2**20:.1f} MiB, "
        f"fds {warm.fds} -> {end.fds}, tasks {warm.tasks} -> {end.tasks}"
    )
    if at_least_once:
        assert lost == 0, f"{lost} of {MESSAGES} messages lost on an at-least-once transport"
        assert result["failed_publishes"] == 0
    assert end.rss - warm.rss <= RSS_GROWTH, (
        f"RSS grew by {(end.rss - warm.rss) / 2**20:.1f} MiB (bound {RSS_GROWTH / 2**20:.0f})"
    )
    assert end.fds - warm.fds <= FD_GROWTH, f"open files grew from {warm.fds} to {end.fds}"
    assert end.tasks - warm.tasks <= TASK_GROWTH, f"tasks grew from {warm.tasks} to {end.tasks}"
