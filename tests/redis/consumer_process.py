"""A queue-group member in a process of its own, for the test that kills it mid-batch.

    python consumer_process.py REDIS_URL TOPIC GROUP

Prints ``subscribed`` once its consumer group exists on the stream, then
handles each entry slowly (``HANDLE_SECONDS``) and appends its number to
``HANDLED_FILE`` before the ack, until it is killed.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import TextIO

from microbroker_redis import RedisBroker

import microbroker


async def main(url: str, topic: str, group: str, handled: TextIO) -> None:
    pause = float(os.environ.get("HANDLE_SECONDS", "0.05"))

    async def handler(delivery: microbroker.Delivery) -> None:
        await asyncio.sleep(pause)
        handled.write(delivery.message.body.decode() + "\n")

    async with RedisBroker(url) as broker:
        await broker.subscribe(topic, handler, queue=group)
        print("subscribed", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    with open(os.environ["HANDLED_FILE"], "a", buffering=1) as file:
        asyncio.run(main(*sys.argv[1:4], file))
