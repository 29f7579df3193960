"""The greeter demo: starts the service, runs the client against it, stops the service, exits.

python examples/greeter/demo.py                       # two processes over the http broker
MICRO_BROKER=memory python examples/greeter/demo.py   # one process, memory broker
MICRO_BROKER=nats MICRO_BROKER_ADDRESS=nats://127.0.0.1:PORT python examples/greeter/demo.py
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from client import talk
from greeter import SERVICE, Greeter

import microbroker

HERE = Path(__file__).resolve().parent


async def in_one_process() -> None:
    service = microbroker.Service(SERVICE)
    service.handle(Greeter())
    async with service:
        await talk(service.client)


async def in_two_processes() -> None:
    server = await asyncio.create_subprocess_exec(
        sys.executable, str(HERE / "service.py"), stdout=asyncio.subprocess.PIPE
    )
    try:
        assert server.stdout is not None
        print("service:", (await server.stdout.readline()).decode().strip())
        broker = microbroker.get_broker()
        async with broker:
            client = microbroker.Client(broker)
            # The service registers its subscription as it starts: retry the first call briefly.
            for attempt in range(50):
                try:
                    await client.call(SERVICE, "Greeter.Hello", {"name": "probe"}, dict, timeout=1)
                    break
                except microbroker.RpcError:
                    if attempt == 49:
                        raise
                    await asyncio.sleep(0.1)
            await talk(client)
    finally:
        server.send_signal(signal.SIGTERM)
        await server.wait()


def main() -> None:
    if os.environ.get("MICRO_BROKER") == "memory":
        asyncio.run(in_one_process())
    else:
        asyncio.run(in_two_processes())


if __name__ == "__main__":
    main()
