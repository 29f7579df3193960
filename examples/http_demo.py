"""Two processes talking over the default broker, with nothing to install or start.

    python examples/http_demo.py

It starts a subscriber process and a publisher process. The subscriber
serves HTTP on a free loopback port and registers itself in the local
registry (a private directory of the user); the publisher finds it there,
sends five greetings, each acknowledged by the subscriber's handler, and both
processes exit. This is the ``http`` broker, microbroker's default as it is
go-micro's; ``MICRO_BROKER=nats`` (and so on) would run the same code on
another transport.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import microbroker

COUNT = 5


def say(role: str, text: str) -> None:
    print(f"[{role} {os.getpid()}] {text}", flush=True)


async def subscriber(topic: str) -> None:
    received = 0
    done = asyncio.Event()

    async def on_greeting(delivery: microbroker.Delivery) -> None:
        nonlocal received
        received += 1
        say("subscriber", f"got {delivery.message.body.decode()!r} (attempt {delivery.attempt})")
        if received == COUNT:
            done.set()

    async with microbroker.get_broker() as broker:
        await broker.subscribe(topic, on_greeting)
        say("subscriber", f"listening on {topic!r} via the {broker} broker")
        await asyncio.wait_for(done.wait(), 60)
    say("subscriber", f"received {received} messages, exiting")


async def publisher(topic: str) -> None:
    async with microbroker.get_broker() as broker:
        # The subscriber may not be up yet: the broker says so instead of dropping the message.
        while True:
            try:
                await broker.publish(topic, microbroker.Message(b"hello #1"), confirm=True)
                break
            except microbroker.PublishError:
                await asyncio.sleep(0.05)
        for i in range(2, COUNT + 1):
            # confirm=True returns once the subscriber's handler has acknowledged the message.
            await broker.publish(topic, microbroker.Message(f"hello #{i}".encode()), confirm=True)
        say("publisher", f"published {COUNT} messages to {topic!r}, each acknowledged")


def main() -> int:
    if len(sys.argv) == 3:
        role, topic = sys.argv[1], sys.argv[2]
        asyncio.run(subscriber(topic) if role == "subscriber" else publisher(topic))
        return 0
    topic = f"demo.greetings.{os.getpid()}"  # one topic per run: concurrent runs stay apart
    procs = [
        subprocess.Popen([sys.executable, __file__, role, topic])
        for role in ("subscriber", "publisher")
    ]
    codes = [proc.wait(timeout=120) for proc in procs]
    ok = codes == [0, 0]
    print(f"both processes exited ({'ok' if ok else f'exit codes {codes}'})", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
