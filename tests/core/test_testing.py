"""microbroker.testing: a Service under test, with no server and no environment to set."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import pytest
from google.protobuf import wrappers_pb2

import microbroker
from microbroker import Context, testing


@dataclass
class OrderCreated:
    id: int
    item: str


@dataclass
class Invoice:
    order: int


def make_shop() -> tuple[microbroker.Service, Any, Any]:
    """An application module's service, made as an application makes it (from MICRO_BROKER)."""
    shop = microbroker.Service("shop")
    billed: list[Invoice] = []

    @shop.subscriber("orders.created", queue="billing", publish_to="invoices")
    async def on_order(order: OrderCreated, ctx: Context) -> Invoice:
        return Invoice(order=order.id)

    @shop.subscriber("invoices")
    async def on_invoice(invoice: Invoice) -> None:
        billed.append(invoice)

    return shop, on_order, on_invoice


async def test_the_quick_start_test() -> None:
    """The README's test, as a user writes it: publish, then assert on the mock at once."""
    shop, on_order, on_invoice = make_shop()
    async with testing.run(shop):
        await shop.event("orders.created").publish(OrderCreated(1, "book"))
        on_order.mock.assert_called_once_with(OrderCreated(1, "book"))
        on_invoice.mock.assert_called_once_with(Invoice(order=1))


async def test_no_environment_is_needed_whatever_it_says(monkeypatch: pytest.MonkeyPatch) -> None:
    """A service whose environment names a broker that is not even installed still tests."""
    monkeypatch.setenv("MICRO_BROKER", "nats-not-installed-here")
    shop, on_order, _ = make_shop()
    async with testing.run(shop) as t:
        assert str(t.broker) == "testing"
        await shop.event("orders.created").publish(OrderCreated(2, "pen"), metadata={"tenant": "a"})
        (call,) = t.calls(on_order)
    assert call.message == OrderCreated(2, "pen")
    assert call.metadata["tenant"] == "a"
    assert not hasattr(on_order, "mock"), "the mock goes with the run"
    # Outside the test, the environment's broker is what the service runs on: not installed.
    with pytest.raises(microbroker.BrokerNotFound, match="nats-not-installed-here"):
        await shop.start()


async def test_a_handler_error_fails_the_publish_that_caused_it() -> None:
    svc = microbroker.Service("errors", broker=microbroker.get_broker("memory"))

    @svc.subscriber("orders")
    async def broken(order: OrderCreated) -> None:
        raise ValueError(f"cannot bill order {order.id}")

    async with testing.run(svc):
        with pytest.raises(ValueError, match="cannot bill order 3"):
            await svc.event("orders").publish(OrderCreated(3, "cup"))


async def test_a_bad_payload_fails_the_test_with_the_field_named() -> None:
    svc = microbroker.Service("decode")

    @svc.subscriber("orders")
    async def on_order(order: OrderCreated) -> None:
        pass

    async with testing.run(svc) as t:
        with pytest.raises(microbroker.DecodeError, match=r"id: expected an integer"):
            await t.broker.publish(
                "orders",
                microbroker.Message(
                    b'{"id": "abc", "item": 5}', {"Content-Type": "application/json"}
                ),
            )
        on_order.mock.assert_not_called()


async def test_an_error_on_a_real_broker_fails_the_test_at_the_end_of_the_block() -> None:
    """On a real broker a publish returns as in production: the error still fails the test."""
    svc = microbroker.Service("late-errors")

    @svc.subscriber("orders")
    async def broken(order: OrderCreated) -> None:
        raise RuntimeError("boom")

    http = microbroker.get_broker("http", registry="memory")

    async def a_test() -> None:
        async with testing.run(svc, broker=http) as t:
            await svc.event("orders").publish(OrderCreated(1, "x"))
            await t.wait_for(broken, 1)

    with pytest.raises(RuntimeError, match="boom"):
        await a_test()


async def test_with_raise_errors_off_retries_run_and_errors_are_collected() -> None:
    svc = microbroker.Service("collected")

    @svc.subscriber("orders", retry=microbroker.RetryPolicy(max_attempts=3, backoff=0.001))
    async def flaky(order: OrderCreated, ctx: Context) -> None:
        if ctx.attempt < 3:
            raise ConnectionError("the database blinked")

    async with testing.run(svc, raise_errors=False) as t:
        await svc.event("orders").publish(OrderCreated(4, "lamp"))
        assert [c.context.attempt for c in t.calls(flaky)] == [1, 2, 3]
    assert [type(e) for e in t.errors] == [ConnectionError, ConnectionError]


async def test_rpc_calls_and_cascades_complete_before_the_publish_returns() -> None:
    svc = microbroker.Service("greeter")
    log: list[str] = []

    class Greeter:
        async def Hello(self, request: wrappers_pb2.StringValue) -> wrappers_pb2.StringValue:
            return wrappers_pb2.StringValue(value=f"hello {request.value}")

    svc.handle(Greeter())

    @svc.subscriber("a")
    async def first(msg: dict[str, Any]) -> None:
        log.append("a")
        await svc.event("b").publish({"n": msg["n"]})

    @svc.subscriber("b")
    async def second(msg: dict[str, Any]) -> None:
        log.append("b")

    async with testing.run(svc):
        reply = await svc.client.call(
            "greeter",
            "Greeter.Hello",
            wrappers_pb2.StringValue(value="x"),
            wrappers_pb2.StringValue,
        )
        await svc.event("a").publish({"n": 1})
        assert log == ["a", "b"], "the cascade ran before the publish returned"
    assert reply.value == "hello x"


async def test_a_real_broker_for_an_integration_test() -> None:
    """``broker=`` runs the service on a broker of the test's choosing; wait_for waits."""
    svc = microbroker.Service("integration")

    @svc.subscriber("orders", queue="q")
    async def on_order(order: OrderCreated) -> None:
        pass

    http = microbroker.get_broker("http", registry="memory")
    async with testing.run(svc, broker=http) as t:
        await svc.event("orders").publish(OrderCreated(5, "desk"))
        (call,) = await t.wait_for(on_order, 1)
    assert call.message == OrderCreated(5, "desk")


def test_it_runs_under_plain_asyncio_run() -> None:
    shop, on_order, _ = make_shop()

    async def main() -> int:
        async with testing.run(shop):
            await shop.event("orders.created").publish(OrderCreated(6, "mug"))
            return on_order.mock.call_count

    assert asyncio.run(main()) == 1


async def test_the_pytest_fixture_runs_and_checks_every_run_ended(
    microbroker_test: Any,
) -> None:
    shop, on_order, _ = make_shop()
    async with microbroker_test.run(shop):
        await shop.event("orders.created").publish(OrderCreated(7, "bag"))
        on_order.mock.assert_called_once_with(OrderCreated(7, "bag"))
    assert microbroker_test.started == microbroker_test.ended == 1


def test_the_fixture_fails_a_test_that_left_a_run_going(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import asyncio
        import microbroker

        def test_forgets(microbroker_test):
            service = microbroker.Service("left", broker=microbroker.get_broker("memory"))

            async def main():
                await microbroker_test.run(service).__aenter__()  # never exited

            asyncio.run(main())
        """
    )
    result = pytester.runpytest_inprocess("-p", "no:asyncio", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*1 testing.run() block(s) started and never ended*"])
