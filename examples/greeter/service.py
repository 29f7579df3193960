"""The greeter service: serves Greeter until SIGINT or SIGTERM.

    MICRO_BROKER=nats MICRO_BROKER_ADDRESS=nats://127.0.0.1:4222 python examples/greeter/service.py
    python examples/greeter/service.py            # the default broker (http), no server needed

Start several: the instances share the calls (the service name is their queue group).
"""

from __future__ import annotations

import asyncio

from greeter import SERVICE, Greeter

import microbroker


async def main() -> None:
    service = microbroker.Service(SERVICE)
    service.handle(Greeter())  # endpoints Greeter.Hello, Greeter.Countdown, Greeter.Chat
    print(f"{SERVICE} serving on the {service.broker.name} broker; Ctrl-C stops it", flush=True)
    await service.run()


if __name__ == "__main__":
    asyncio.run(main())
