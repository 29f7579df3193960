"""The README's quick-start test: no server, no environment, no sleep."""

from __future__ import annotations

from shop import OrderCreated, on_order, service

from microbroker import testing


async def test_an_order_reaches_billing() -> None:
    async with testing.run(service):
        await service.event("orders.created").publish(
            OrderCreated(1, "book"), metadata={"tenant": "a"}
        )
        on_order.mock.assert_called_once_with(OrderCreated(1, "book"))
