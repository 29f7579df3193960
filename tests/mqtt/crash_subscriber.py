"""A subscriber process for the crash tests: a slow handler that records what it handled.

Run as ``python crash_subscriber.py URL CLIENT_ID PROTOCOL TOPIC QUEUE RECORD READY``
(``QUEUE`` empty for a plain subscription). Each message it has handled is
appended to ``RECORD`` (its body and a newline) by one ``write`` system call,
at the end of the handler: what the file holds when the process is killed is
what the handler had finished. The file ``READY`` is created once the
subscription is made. The process runs until it is killed.
"""

from __future__ import annotations

import asyncio
import os
import sys

import microbroker
from microbroker_mqtt import MqttBroker


async def main(
    url: str, client_id: str, protocol: str, topic: str, queue: str, record: str, ready: str
) -> None:
    fd = os.open(record, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    async def handler(delivery: microbroker.Delivery) -> None:
        await asyncio.sleep(0.001)  # a slow handler: the messages pile up behind it
        os.write(fd, delivery.message.body + b"\n")

    broker = MqttBroker(url, client_id=client_id, protocol=protocol, qos=1, reconnect_delay=0.2)
    await broker.connect()
    await broker.subscribe(topic, handler, queue=queue or None)
    os.close(os.open(ready, os.O_WRONLY | os.O_CREAT, 0o644))
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:8]))
