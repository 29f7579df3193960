"""A group member run as its own process, to be killed mid-batch by test_kafka_broker.

Usage: python crash_consumer.py ADDRESS TOPIC GROUP OUTFILE CLIENT. Every message it
handles is appended to OUTFILE (flushed) before the handler returns.
"""

from __future__ import annotations

import asyncio
import sys

from kafka_helpers import FAST

from microbroker import Delivery
from microbroker_kafka import KafkaBroker


async def main(address: str, topic: str, group: str, outfile: str, client: str) -> None:
    out = open(outfile, "a", buffering=1)  # noqa: SIM115, ASYNC230 - kept until the kill
    broker = KafkaBroker(address, client=client, **{**FAST, "partitions": 2})
    await broker.connect()

    async def handler(delivery: Delivery) -> None:
        out.write(delivery.message.body.decode() + "\n")
        await asyncio.sleep(0.01)

    await broker.subscribe(topic, handler, queue=group)
    print("subscribed", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:6]))
