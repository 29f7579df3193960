"""MQTT throughput: microbroker's Event and Broker APIs against raw gmqtt, in one run.

Starts its own ``mosquitto`` (Debian package ``mosquitto``) on a free loopback
port with the tests' configuration, then measures publish->deliver throughput,
one publisher and one subscriber on separate connections in one process, all
at the same QoS (1 by default) under MQTT 5:

- ``raw gmqtt``: ``client.publish(Message(topic, body, qos))`` and a counting
  ``on_message``, the baseline. Like the broker, it keeps at most
  ``--window`` publishes unacknowledged;
- ``raw gmqtt +headers``: the same with the three headers an Event carries, as
  user properties;
- ``broker``: ``MqttBroker.publish(topic, Message(body))`` and a counting handler;
- ``broker +headers``: the same with the three headers an Event carries;
- ``event protobuf``: ``service.event(topic).publish(proto)`` and a typed subscriber.

The body is a protobuf message of about 100 bytes, serialized once for the raw
cases. Target: ``event protobuf`` >= 0.8x ``raw gmqtt``.

    python benchmarks/mqtt_throughput.py [--messages 50000] [--repeat 3] [--qos 1]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import sys
import tempfile
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import gmqtt  # type: ignore[import-untyped]
from gmqtt.mqtt.constants import MQTTv50  # type: ignore[import-untyped]
from gmqtt.storage import PersistentStorage  # type: ignore[import-untyped]
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
from microbroker_mqtt import MqttBroker

RAW = "raw gmqtt"


@contextlib.contextmanager
def mosquitto() -> Iterator[str]:
    """A mosquitto of our own on a free loopback port, configured as tests/support does."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="bench-mosquitto-"))
    config = workdir / "mosquitto.conf"
    config.write_text(
        "\n".join(
            [
                "per_listener_settings false",
                f"listener {port} {HOST}",
                "allow_anonymous true",
                "max_queued_messages 200000",
                "max_inflight_messages 100",
                "persistence true",
                f"persistence_location {workdir}/",
                "log_dest none",
            ]
        )
        + "\n"
    )
    try:
        with server_process([binary, "-c", str(config)], port, "mosquitto"):
            yield f"mqtt://{HOST}:{port}"
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


class _Window(PersistentStorage):  # type: ignore[misc]
    """gmqtt's in-flight store, with a wake-up when a publish is acknowledged."""

    def __init__(self) -> None:
        super().__init__()
        self.room = asyncio.Event()

    def remove_message_by_mid(self, mid: int) -> None:
        super().remove_message_by_mid(mid)
        self.room.set()


async def raw_case(
    port: int, body: bytes, qos: int, window: int, headers: dict[str, str] | None
) -> tuple[RunOnce, Any]:
    store = _Window()
    pub = gmqtt.Client(f"bench-pub-{uuid.uuid4().hex[:8]}", persistent_storage=store)
    sub = gmqtt.Client(f"bench-sub-{uuid.uuid4().hex[:8]}")
    topic = f"bench/raw/{uuid.uuid4().hex[:8]}"
    state: dict[str, Counter] = {}
    subscribed = asyncio.Event()

    def on_message(client: Any, topic: str, payload: bytes, qos: int, props: Any) -> int:
        state["counter"].hit()
        return 0

    connack: dict[str, Any] = {}
    sub.on_message = on_message
    sub.on_subscribe = lambda *args: subscribed.set()
    pub.on_connect = lambda client, flags, rc, properties: connack.update(properties)
    await pub.connect(HOST, port, version=MQTTv50)
    # The server's Receive Maximum bounds the window (gmqtt sizes its packet ids by it),
    # and the broker's the same way: a few ids are kept for SUBSCRIBE/UNSUBSCRIBE.
    window = min(window, int(connack.get("receive_maximum", [window + 4])[0]) - 4)
    await sub.connect(HOST, port, version=MQTTv50)
    sub.subscribe(topic, qos=qos)
    await subscribed.wait()
    extra = {"user_property": list(headers.items())} if headers else {}

    async def run_once(n: int) -> None:
        counter = state["counter"] = Counter(n)
        publish = pub.publish
        pending = store._messages
        room = store.room
        for _ in range(n):
            while len(pending) >= window:
                room.clear()
                await room.wait()
            publish(gmqtt.Message(topic, body, qos=qos, **extra))
        await counter.wait(120)

    async def close() -> None:
        await pub.disconnect()
        await sub.disconnect()

    return run_once, close


async def broker_case(
    url: str, body: bytes, qos: int, window: int, headers: dict[str, str] | None = None
) -> tuple[RunOnce, Any]:
    pub = MqttBroker(url, qos=qos, max_inflight=window)
    sub = MqttBroker(url, qos=qos)
    await pub.connect()
    await sub.connect()
    topic = f"bench/broker/{uuid.uuid4().hex[:8]}"
    state: dict[str, Counter] = {}

    async def handler(delivery: microbroker.Delivery) -> None:
        state["counter"].hit()

    await sub.subscribe(topic, handler)

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


async def event_case(url: str, qos: int, window: int) -> tuple[RunOnce, Any]:
    return await harness_event_case(
        MqttBroker(url, qos=qos, max_inflight=window), MqttBroker(url, qos=qos), "bench/event/"
    )


async def main(messages: int, repeat: int, qos: int, window: int) -> list[Result]:
    body = sample().SerializeToString()
    event_headers = {
        "Content-Type": "application/protobuf",
        "Micro-Topic": "bench/raw",
        "Micro-Id": str(uuid.uuid4()),
    }
    shape = f"1->1 {len(body)}B qos{qos}"
    results: list[Result] = []
    with mosquitto() as url:
        port = int(url.rsplit(":", 1)[1])
        cases: list[tuple[str, Callable[[], Awaitable[tuple[RunOnce, Any]]]]] = [
            (RAW, lambda: raw_case(port, body, qos, window, None)),
            (f"{RAW} +headers", lambda: raw_case(port, body, qos, window, event_headers)),
            ("broker", lambda: broker_case(url, body, qos, window)),
            ("broker +headers", lambda: broker_case(url, body, qos, window, event_headers)),
            ("event protobuf", lambda: event_case(url, qos, window)),
        ]
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
    parser.add_argument("--qos", type=int, default=1, choices=(0, 1, 2))
    parser.add_argument("--window", type=int, default=1000, help="unacknowledged publishes")
    args = parser.parse_args()
    found = asyncio.run(main(args.messages, args.repeat, args.qos, args.window))
    print(ratio_table(found, RAW, "MQTT publish->deliver throughput"))
    print(f"saved {save(f'mqtt_qos{args.qos}', found)}")
