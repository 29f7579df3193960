"""Typed subscribers beyond ``async def``: plain functions, results published, middleware."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Any

import pytest
from _helpers import Inbox, new_address

import microbroker
from microbroker import Context


@dataclass
class Order:
    id: int
    item: str


@dataclass
class Invoice:
    order: int
    total: float


def service(name: str) -> microbroker.Service:
    return microbroker.Service(name, broker=microbroker.get_broker("memory", address=new_address()))


async def test_a_plain_function_runs_in_a_worker_thread_and_is_acked() -> None:
    svc = service("sync")
    seen: list[tuple[Order, str, str]] = []
    done = asyncio.Event()
    loop_thread = threading.current_thread().name

    @svc.subscriber("orders")
    def on_order(order: Order, ctx: Context) -> None:  # blocking code is fine here
        seen.append((order, ctx.metadata["tenant"], threading.current_thread().name))
        done.set()

    async with svc:
        await svc.event("orders").publish(Order(1, "tea"), metadata={"tenant": "a"})
        await asyncio.wait_for(done.wait(), 5)
    ((order, tenant, thread),) = seen
    assert (order, tenant) == (Order(1, "tea"), "a")
    assert thread != loop_thread, "a plain handler must not run on the event loop's thread"


async def test_a_plain_function_that_raises_is_a_failed_attempt() -> None:
    svc = service("sync-fails")
    attempts: list[int] = []
    done = asyncio.Event()

    @svc.subscriber("orders", retry=microbroker.RetryPolicy(max_attempts=3, backoff=0.001))
    def on_order(order: Order, ctx: Context) -> None:
        attempts.append(ctx.attempt)
        if ctx.attempt < 3:
            raise RuntimeError("not yet")
        done.set()

    async with svc:
        await svc.event("orders").publish(Order(2, "cake"))
        await asyncio.wait_for(done.wait(), 5)
    assert attempts == [1, 2, 3]


async def test_publish_to_publishes_the_result_and_none_publishes_nothing() -> None:
    svc = service("pipeline")
    invoices = Inbox()

    @svc.subscriber("orders", publish_to="invoices")
    async def bill(order: Order) -> Invoice | None:
        if order.item == "free sample":
            return None
        return Invoice(order=order.id, total=9.5)

    @svc.subscriber("invoices")
    async def on_invoice(invoice: Invoice, ctx: Context) -> None:
        invoices.add((invoice, ctx.content_type))

    async with svc:
        await svc.event("orders").publish(Order(1, "tea"))
        await svc.event("orders").publish(Order(2, "free sample"))
        await svc.event("orders").publish(Order(3, "cake"))
        await invoices.wait_for(2)
    assert invoices.deliveries == [
        (Invoice(1, 9.5), "application/json"),
        (Invoice(3, 9.5), "application/json"),
    ]


async def test_a_result_that_cannot_be_published_fails_the_attempt() -> None:
    """The result goes out before the ack: a failed publish retries the message, nothing lost."""
    svc = service("pipeline-fails")
    attempts: list[int] = []
    done = asyncio.Event()

    class NotEncodable:
        pass

    @svc.subscriber(
        "orders", publish_to="out", retry=microbroker.RetryPolicy(max_attempts=3, backoff=0.001)
    )
    async def bill(order: Order, ctx: Context) -> Any:
        attempts.append(ctx.attempt)
        if ctx.attempt < 3:
            return NotEncodable()
        done.set()
        return None

    async with svc:
        await svc.event("orders").publish(Order(1, "tea"))
        await asyncio.wait_for(done.wait(), 5)
    assert attempts == [1, 2, 3]


async def test_middleware_wraps_the_handler_outermost_first() -> None:
    svc = service("middleware")
    trail: list[str] = []
    done = asyncio.Event()

    async def outer(call: Any, message: Order, ctx: Context) -> Any:
        trail.append(f"outer in {message.id}")
        result = await call(message, ctx)
        trail.append(f"outer out {result}")
        return result

    async def inner(call: Any, message: Order, ctx: Context) -> Any:
        trail.append("inner in")
        # A middleware may change what the handler sees.
        return await call(Order(message.id, message.item.upper()), ctx)

    @svc.subscriber("orders", middleware=[outer, inner], publish_to="seen")
    async def handler(order: Order) -> str:
        trail.append(f"handler {order.item}")
        done.set()
        return order.item

    async with svc:
        await svc.event("orders").publish(Order(7, "tea"))
        await asyncio.wait_for(done.wait(), 5)
        await asyncio.sleep(0)
    assert trail == ["outer in 7", "inner in", "handler TEA", "outer out TEA"]


async def test_middleware_sees_the_handlers_error_and_may_turn_it_into_success() -> None:
    svc = service("middleware-errors")
    errors: list[str] = []
    handled = Inbox()

    async def swallow_value_errors(call: Any, message: Order, ctx: Context) -> Any:
        try:
            return await call(message, ctx)
        except ValueError as exc:
            errors.append(str(exc))
            await ctx.ack()
            return None

    @svc.subscriber("orders", middleware=[swallow_value_errors])
    async def handler(order: Order, ctx: Context) -> None:
        handled.add(ctx.attempt)
        raise ValueError(f"bad order {order.id}")

    async with svc:
        await svc.event("orders").publish(Order(1, "tea"))
        await handled.wait_for(1)
        await asyncio.sleep(0.05)
    assert errors == ["bad order 1"]
    assert handled.deliveries == [1], "the middleware acked it: not redelivered"


def test_a_sync_middleware_is_refused_with_what_to_write() -> None:
    def not_async(call: Any, message: Any, ctx: Any) -> Any:
        return None

    async def handler(order: Order) -> None:
        return None

    with pytest.raises(TypeError, match=r"async def middleware\(call, message, ctx\)"):
        service("bad-middleware").server.new_subscriber("t", handler, middleware=[not_async])
