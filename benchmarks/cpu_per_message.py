"""CPU seconds per message, of the client process and of the server process, in one run.

    python benchmarks/cpu_per_message.py rabbitmq [--messages 5000] [--rounds 3]
    python benchmarks/cpu_per_message.py redis [--messages 5000] [--rounds 3]

The variants of ``benchmarks/transports/<transport>.py`` (for rabbitmq also
raw aio-pika, the client FastStream's RabbitBroker is built on), the shapes
``1->1`` and ``queue4`` of ``run.py`` at 128 B and 1 KiB, one publish awaited
at a time, publisher and subscribers in this process, the server a child
process started as the tests start theirs. For each case it reads, before and
after ``messages`` deliveries:

- this process's CPU time (``time.process_time``: user + system, all threads);
- the server's (``utime + stime`` of ``/proc/<pid>/stat``: the Erlang VM
  ``beam.smp`` for rabbitmq, ``redis-server`` for redis; all its threads);
- the wall time.

CPU time per message does not depend on what else a shared machine runs as
much as a rate does (a process waiting for the CPU is not charged for it),
so it says which side a rate is bound by. Each round measures every variant
once, in turn; the median of the rounds is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

from harness import Counter  # noqa: E402
from run import body_of  # noqa: E402
from transports import Hit, Publish, Transport, Variant  # noqa: E402

SIZES = {"128B": 128, "1KiB": 1024}
SHAPES = {"1->1": (1, None), "queue4": (4, "workers")}
TICK = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) ``pid`` has used, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime (fields 14, 15)


class RawAioPika(Variant):
    """aio-pika by hand: ``exchange.publish`` (confirmed) and a consumer that acks."""

    kind = "raw-aio-pika"

    def __init__(self, url: str) -> None:
        self.url = url

    async def open(self) -> None:
        import aio_pika
        from transports import rabbitmq

        self.pub = await aio_pika.connect(self.url)
        self.sub = await aio_pika.connect(self.url)
        channel = await self.pub.channel(publisher_confirms=True)
        self.exchange = await channel.declare_exchange(
            rabbitmq.EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
        )

    async def subscribe(self, topic: str, queue: str | None, hit: Hit) -> None:
        import aio_pika.abc
        from transports import rabbitmq

        channel = await self.sub.channel()
        await channel.set_qos(prefetch_count=rabbitmq.PREFETCH)
        if queue:
            declared = await channel.declare_queue(f"{topic}:{queue}", durable=True)
        else:
            declared = await channel.declare_queue(exclusive=True, auto_delete=True)
        await declared.bind(rabbitmq.EXCHANGE, routing_key=topic)

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            hit()
            await message.ack()

        await declared.consume(on_message)

    def publisher(self, topic: str, body: bytes) -> Publish:
        import aio_pika

        publish = self.exchange.publish
        persistent = aio_pika.DeliveryMode.PERSISTENT

        async def send() -> None:
            message = aio_pika.Message(
                body,
                delivery_mode=persistent,
                message_id=uuid.uuid4().hex,
                content_type="application/protobuf",
            )
            await publish(message, routing_key=topic)

        return send

    async def close(self) -> None:
        await self.pub.close()
        await self.sub.close()


def setup(name: str) -> tuple[Transport, Callable[[Any], int]]:
    """The transport, and how to find its server's pid."""
    if name == "rabbitmq":
        from transports import rabbitmq

        transport = rabbitmq.transport()
        transport.variants["raw-aio-pika"] = lambda server: RawAioPika(str(server.url))

        def vm(server: Any) -> int:
            pid = server.vm_pid
            assert pid is not None, "no beam.smp under the rabbitmq start script"
            return int(pid)

        return transport, vm
    if name == "redis":
        from transports import redis

        return redis.transport(), lambda server: int(server.proc.pid)
    raise SystemExit(f"unknown transport {name!r}: rabbitmq or redis")


async def once(
    variant: Variant, server_pid: int, size: int, subs: int, queue: str | None, n: int
) -> tuple[float, float, float]:
    """(client CPU us per message, server CPU us per message, messages per second)."""
    tag = uuid.uuid4().hex[:8]
    topic = variant.separator.join(("bench", tag))
    queue = f"{queue}-{tag}" if queue else None
    state = {"c": Counter(1 << 62)}

    def hit() -> None:
        state["c"].hit()

    await variant.open()
    try:
        for _ in range(subs):
            await variant.subscribe(topic, queue, hit)
        await variant.ready()
        publish = variant.publisher(topic, body_of(size))
        warm = state["c"] = Counter(200)
        for _ in range(200):
            await publish()
        await warm.wait(30)
        counter = state["c"] = Counter(n)
        wall, cpu, server = time.perf_counter(), time.process_time(), process_cpu(server_pid)
        for _ in range(n):
            await publish()
        await counter.wait(120)
        wall = time.perf_counter() - wall
        cpu = time.process_time() - cpu
        server = process_cpu(server_pid) - server
        return cpu / n * 1e6, server / n * 1e6, n / wall
    finally:
        await variant.close()


async def run(name: str, n: int, rounds: int) -> list[tuple[str, str, str, list[Any]]]:
    transport, pid_of = setup(name)
    rows: list[tuple[str, str, str, list[Any]]] = []
    with transport.server() as server:
        pid = pid_of(server)
        for shape, (subs, queue) in SHAPES.items():
            for size_name, size in SIZES.items():
                found: dict[str, list[tuple[float, float, float]]] = {}
                for _ in range(rounds):
                    for kind, make in transport.variants.items():
                        result = await once(make(server), pid, size, subs, queue, n)
                        found.setdefault(kind, []).append(result)
                for kind, results in found.items():
                    client = statistics.median(r[0] for r in results)
                    srv = statistics.median(r[1] for r in results)
                    rate = statistics.median(r[2] for r in results)
                    rows.append((shape, size_name, kind, [client, srv, rate, results]))
                    print(
                        f"{shape:6} {size_name:5} {kind:14} client {client:6.1f} us/msg  "
                        f"server {srv:6.1f} us/msg  {rate:8,.0f} msg/s",
                        file=sys.stderr,
                        flush=True,
                    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("transport", choices=("rabbitmq", "redis"))
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rows = asyncio.run(run(args.transport, args.messages, args.rounds))
    server = "beam.smp" if args.transport == "rabbitmq" else "redis-server"
    print(
        f"\n{args.transport}: {args.messages} messages a case, one publish awaited at a time, "
        f"median of {args.rounds} interleaved rounds; CPU in us per message\n"
    )
    print(f"| shape | body | variant | client CPU | {server} CPU | both | msg/s |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: |")
    for shape, size, kind, (client, srv, rate, _) in rows:
        print(
            f"| {shape} | {size} | {kind} | {client:.1f} | {srv:.1f} | {client + srv:.1f} "
            f"| {rate:,.0f} |"
        )


if __name__ == "__main__":
    main()
