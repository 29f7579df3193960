"""The README's quick start: a service with a typed subscriber.

python examples/shop/shop.py                    # serve until Ctrl-C
microbroker run shop:service --app-dir examples/shop
"""

from __future__ import annotations

from dataclasses import dataclass

import microbroker


@dataclass
class OrderCreated:
    id: int
    item: str


service = microbroker.Service("shop")  # broker, client and server from the environment


@service.subscriber("orders.created", queue="billing")
async def on_order(order: OrderCreated, ctx: microbroker.Context) -> None:
    # Decoded and checked by the annotation; metadata travels as headers.
    print(order, ctx.metadata.get("tenant"))


if __name__ == "__main__":
    import asyncio

    asyncio.run(service.run())
