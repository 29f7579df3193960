"""aio-pika against aiormq on one RabbitMQ: the measurement behind microbroker-rabbitmq's client.

    python benchmarks/rabbitmq_clients.py [--messages 20000] [--repeat 3] [--address amqp://...]

Without ``--address`` it starts its own server the way the tests do
(``tests/support/rabbitmq_server.py``: a node of its own on free loopback
ports). For each client and body size (128 B, 1 KiB), back to back against
the same server:

- *publish with confirms*: persistent messages to a durable queue through the
  default exchange on a channel in confirm mode, ``window`` publishes in flight
  (each awaited for its confirm), messages per second;
- *consume*: the same queue, pre-filled, consumed with manual acks at
  prefetch ``window``, messages per second until all are acked.

aiormq is also measured on a quorum queue (``x-queue-type: quorum``), the
queue type that counts redeliveries (``x-delivery-count``), against the
classic queue the broker uses by default.

CPU per message is this process's CPU time (user + system, from
``time.process_time``) over the messages: the client's cost, not the server's.
Each case is run ``repeat`` times, keeping the best rate.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import aio_pika  # noqa: E402
import aiormq  # noqa: E402
from pamqp.commands import Basic  # noqa: E402


@dataclass
class Result:
    client: str
    case: str
    size: int
    rate: float
    cpu_us: float


async def _timed(n: int, run: Callable[[], Awaitable[None]]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    await run()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return n / wall, cpu / n * 1e6


async def aiormq_case(
    url: str, size: int, n: int, window: int, quorum: bool = False
) -> tuple[Result, Result]:
    body = os.urandom(size)
    queue = f"bench-{uuid.uuid4().hex[:8]}"
    client = "aiormq, quorum queue" if quorum else "aiormq"
    conn = await aiormq.connect(url)
    try:
        channel = await conn.channel(publisher_confirms=True)
        arguments = {"x-queue-type": "quorum"} if quorum else None
        await channel.queue_declare(queue, durable=True, arguments=arguments)
        props = Basic.Properties(delivery_mode=2, headers={"Micro-ID": "x"})
        slots = asyncio.Semaphore(window)

        async def one() -> None:
            async with slots:
                confirmation = await channel.basic_publish(
                    body, routing_key=queue, properties=props
                )
                assert isinstance(confirmation, Basic.Ack)

        async def publish() -> None:
            await asyncio.gather(*(one() for _ in range(n)))

        rate, cpu = await _timed(n, publish)
        publish_result = Result(client, "publish+confirm", size, rate, cpu)

        consumer = await conn.channel()
        await consumer.basic_qos(prefetch_count=window)
        done = asyncio.get_running_loop().create_future()
        count = 0

        async def on_message(message: aiormq.abc.DeliveredMessage) -> None:
            nonlocal count
            await consumer.basic_ack(message.delivery_tag)
            count += 1
            if count == n and not done.done():
                done.set_result(None)

        async def consume() -> None:
            await consumer.basic_consume(queue, on_message)
            await done

        rate, cpu = await _timed(n, consume)
        consume_result = Result(client, "consume+ack", size, rate, cpu)
        await consumer.close()
        await channel.queue_delete(queue)
        return publish_result, consume_result
    finally:
        await conn.close()


async def aio_pika_case(url: str, size: int, n: int, window: int) -> tuple[Result, Result]:
    body = os.urandom(size)
    name = f"bench-{uuid.uuid4().hex[:8]}"
    conn = await aio_pika.connect(url)
    try:
        channel = await conn.channel(publisher_confirms=True)
        queue = await channel.declare_queue(name, durable=True)
        slots = asyncio.Semaphore(window)
        exchange = channel.default_exchange

        async def one() -> None:
            async with slots:
                message = aio_pika.Message(
                    body,
                    headers={"Micro-ID": "x"},
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                )
                await exchange.publish(message, routing_key=name)

        async def publish() -> None:
            await asyncio.gather(*(one() for _ in range(n)))

        rate, cpu = await _timed(n, publish)
        publish_result = Result("aio-pika", "publish+confirm", size, rate, cpu)

        consumer = await conn.channel()
        await consumer.set_qos(prefetch_count=window)
        consumer_queue = await consumer.get_queue(name, ensure=False)
        done = asyncio.get_running_loop().create_future()
        count = 0

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal count
            await message.ack()
            count += 1
            if count == n and not done.done():
                done.set_result(None)

        async def consume() -> None:
            await consumer_queue.consume(on_message)
            await done

        rate, cpu = await _timed(n, consume)
        consume_result = Result("aio-pika", "consume+ack", size, rate, cpu)
        await consumer.close()
        await queue.delete(if_unused=False, if_empty=False)
        return publish_result, consume_result
    finally:
        await conn.close()


@contextlib.contextmanager
def server(address: str | None) -> Iterator[str]:
    if address:
        yield address
        return
    from support.rabbitmq_server import RabbitMQServer

    with RabbitMQServer(name="bench-clients") as rabbit:
        yield rabbit.url


async def main_async(url: str, n: int, repeat: int, window: int) -> list[Result]:
    best: dict[tuple[str, str, int], Result] = {}

    async def quorum(url: str, size: int, n: int, window: int) -> tuple[Result, Result]:
        return await aiormq_case(url, size, n, window, quorum=True)

    cases = {"aiormq": aiormq_case, "aio-pika": aio_pika_case, "aiormq, quorum queue": quorum}
    for size in (128, 1024):
        for _ in range(repeat):
            for client, run in cases.items():  # interleaved: both see the same server state
                for result in await run(url, size, n, window):
                    key = (client, result.case, size)
                    if key not in best or result.rate > best[key].rate:
                        best[key] = result
    return sorted(best.values(), key=lambda r: (r.case, r.size, r.client))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--window", type=int, default=256, help="publishes in flight / prefetch")
    parser.add_argument("--address", help="an AMQP URL; default: start a server of our own")
    args = parser.parse_args()
    with server(args.address) as url:
        results = asyncio.run(main_async(url, args.messages, args.repeat, args.window))
    print(f"{args.messages} messages, window {args.window}, best of {args.repeat}\n")
    print("| case | size | client | msg/s | CPU µs/msg |")
    print("| --- | --- | --- | ---: | ---: |")
    for r in results:
        print(f"| {r.case} | {r.size} B | {r.client} | {r.rate:,.0f} | {r.cpu_us:.1f} |")


if __name__ == "__main__":
    main()
