"""Quick start: a typed publisher and a typed subscriber on the broker chosen by MICRO_BROKER.

    python examples/quickstart.py                  # the default broker
    MICRO_BROKER=memory python examples/quickstart.py

It publishes a few orders, prints what the subscriber received, and exits.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from google.protobuf import wrappers_pb2

import microbroker


@dataclass
class OrderCreated:
    id: int
    item: str


async def main() -> None:
    service = microbroker.Service("shop")
    received = asyncio.Queue[str]()

    @service.subscriber("orders.created", queue="billing")
    async def on_order(order: OrderCreated, ctx: microbroker.Context) -> None:
        # The body is JSON, decoded into the annotation's type; metadata came as headers.
        await received.put(f"order {order.id} ({order.item}) for tenant {ctx.metadata['tenant']}")

    @service.subscriber("greetings")
    async def on_greeting(msg: wrappers_pb2.StringValue) -> None:
        await received.put(f"greeting (protobuf): {msg.value}")

    async with service:
        orders = service.event("orders.created")
        for n, item in enumerate(["book", "lamp", "kettle"], start=1):
            await orders.publish(OrderCreated(id=n, item=item), metadata={"Tenant": "acme"})
        await service.event("greetings").publish(wrappers_pb2.StringValue(value="hello"))
        for _ in range(4):
            print(await asyncio.wait_for(received.get(), timeout=10))
    print(f"done: 4 messages over the {service.broker} broker")


if __name__ == "__main__":
    asyncio.run(main())
