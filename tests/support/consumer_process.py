"""A queue-group member in a process of its own, for the tests that kill one mid-batch.

    python consumer_process.py BROKER URL TOPIC GROUP

Connects the broker named ``BROKER`` (``rabbitmq``, ``redis``, ...) at ``URL``,
prints ``subscribed`` once its subscription is made, then handles each message
slowly (``HANDLE_SECONDS``) and appends its number to ``HANDLED_FILE`` before
the ack, until it is killed. :func:`spawn_consumer` starts one.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import TextIO

import microbroker


def spawn_consumer(
    broker: str, url: str, topic: str, group: str, handled: Path
) -> subprocess.Popen[bytes]:
    """This module as a child process; its output (``subscribed``) on its stdout."""
    return subprocess.Popen(
        [sys.executable, __file__, broker, url, topic, group],
        env={**os.environ, "HANDLED_FILE": str(handled), "HANDLE_SECONDS": "0.05"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


async def main(broker_name: str, url: str, topic: str, group: str, handled: TextIO) -> None:
    pause = float(os.environ.get("HANDLE_SECONDS", "0.05"))

    async def handler(delivery: microbroker.Delivery) -> None:
        await asyncio.sleep(pause)
        handled.write(delivery.message.body.decode() + "\n")

    async with microbroker.get_broker(broker_name, address=url) as broker:
        await broker.subscribe(topic, handler, queue=group)
        print("subscribed", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    with open(os.environ["HANDLED_FILE"], "a", buffering=1) as file:
        asyncio.run(main(*sys.argv[1:5], file))
