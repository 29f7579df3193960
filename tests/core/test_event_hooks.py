"""Event hooks (observe or wrap each publish and delivery) through get_broker, and their cost."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest
from _helpers import Inbox, quiesce

import microbroker
from microbroker import Message
from microbroker._plugins import event_hooks, registry
from microbroker.brokers.memory import MemoryBroker


def memory(address: str, **options: Any) -> microbroker.Broker:
    return microbroker.get_broker("memory", address=address, **options)


def assert_uninstrumented(broker: microbroker.Broker) -> None:
    """No hook on the hot path: publish hands the message straight to the transport's send."""
    hooks = event_hooks()
    assert not hooks.publishes
    assert not hooks.delivers
    assert broker.publish.__func__ is microbroker.Broker.publish  # type: ignore[attr-defined]


class Tracer:
    """A tracing plugin: stamps a header on publish and records deliveries."""

    def __init__(self) -> None:
        self.published: list[tuple[str, str, bytes]] = []
        self.delivered: list[tuple[str, str | None]] = []

    @microbroker.hookimpl
    def on_publish(self, broker: microbroker.Broker, topic: str, message: Message) -> None:
        self.published.append((str(broker), topic, message.body))
        message.headers["traceparent"] = f"trace-{len(self.published)}"

    @microbroker.hookimpl
    def on_deliver(self, broker: microbroker.Broker, delivery: microbroker.Delivery) -> None:
        self.delivered.append((delivery.topic, delivery.message.headers.get("traceparent")))


def test_no_event_hooks_means_the_broker_is_untouched(address: str) -> None:
    assert not registry().event_hooks().publishes
    assert_uninstrumented(memory(address))


def test_an_on_error_hook_alone_costs_nothing_on_the_hot_path(
    address: str, plugin: Callable[..., str]
) -> None:
    class OnlyErrors:
        @microbroker.hookimpl
        def on_error(self, error: BaseException, delivery: Any) -> None:
            pass

    plugin(OnlyErrors(), "only-errors")
    assert_uninstrumented(memory(address))


async def test_on_publish_adds_headers_and_on_deliver_observes(
    address: str, plugin: Callable[..., str]
) -> None:
    tracer = Tracer()
    plugin(tracer, "tracer")
    inbox = Inbox()
    async with memory(address) as broker:
        assert event_hooks().publishes
        await broker.subscribe("traced", inbox)
        await broker.publish("traced", Message(b"a", {"k": "v"}))
        await broker.publish("traced", Message(b"b"))
        await inbox.wait_for(2)
    assert tracer.published == [("memory", "traced", b"a"), ("memory", "traced", b"b")]
    assert [d.message.headers for d in inbox.deliveries] == [
        {"k": "v", "traceparent": "trace-1"},
        {"traceparent": "trace-2"},
    ]
    assert tracer.delivered == [("traced", "trace-1"), ("traced", "trace-2")]


async def test_on_publish_raising_aborts_the_publish(
    address: str, plugin: Callable[..., str]
) -> None:
    class Guard:
        @microbroker.hookimpl
        def on_publish(self, topic: str, message: Message) -> None:  # a subset of the arguments
            if topic.startswith("forbidden"):
                raise PermissionError(f"publishing to {topic} is not allowed")

    plugin(Guard(), "guard")
    inbox = Inbox()
    async with memory(address) as broker:
        await broker.subscribe(">", inbox)
        with pytest.raises(PermissionError, match=r"forbidden\.x"):
            await broker.publish("forbidden.x", Message(b"no"))
        await broker.publish("allowed", Message(b"yes"))
        await inbox.wait_for(1)
        await quiesce()
    assert inbox.bodies == [b"yes"]


async def test_wrap_publish_wraps_every_publish(address: str, plugin: Callable[..., str]) -> None:
    calls: list[tuple[str, str, dict[str, Any]]] = []

    class Timer:
        @microbroker.hookimpl
        def wrap_publish(self, broker: microbroker.Broker, publish: Any) -> Any:
            async def timed(topic: str, message: Message, **options: Any) -> None:
                calls.append(("before", topic, options))
                await publish(topic, message, **options)
                calls.append(("after", topic, options))

            return timed

    class Declines:
        @microbroker.hookimpl
        def wrap_publish(self, publish: Any) -> Any:  # a subset of the arguments, returns None
            return None

    plugin(Timer(), "timer")
    plugin(Declines(), "declines")
    inbox = Inbox()
    async with memory(address) as broker:
        await broker.subscribe("w", inbox)
        await broker.publish("w", Message(b"1"))
        await inbox.wait_for(1)
    assert calls == [("before", "w", {}), ("after", "w", {})]


async def test_wrap_handler_wraps_each_subscription(
    address: str, plugin: Callable[..., str]
) -> None:
    wrapped: list[tuple[str, str | None]] = []
    around: list[str] = []

    class Around:
        @microbroker.hookimpl
        def wrap_handler(
            self, broker: microbroker.Broker, topic: str, queue: str | None, handler: Any
        ) -> Any:
            wrapped.append((topic, queue))

            async def span(delivery: microbroker.Delivery) -> None:
                around.append(f"start {delivery.message.body.decode()}")
                await handler(delivery)
                around.append(f"end {delivery.message.body.decode()}")

            return span

    plugin(Around(), "around")
    inbox = Inbox(lambda d: around.append(f"handler {d.message.body.decode()}"))
    async with memory(address) as broker:
        await broker.subscribe("h", inbox, queue="q")
        await broker.publish("h", Message(b"1"))
        await inbox.wait_for(1)
        await quiesce()
    assert wrapped == [("h", "q")]
    assert around == ["start 1", "handler 1", "end 1"]
    assert inbox.deliveries[0].acked


async def test_wrapper_exception_is_a_handler_error(
    address: str, plugin: Callable[..., str]
) -> None:
    errors: list[BaseException] = []

    class Strict:
        @microbroker.hookimpl
        def wrap_handler(self, handler: Any) -> Any:
            async def reject_first(delivery: microbroker.Delivery) -> None:
                if delivery.attempt == 1:
                    raise LookupError("rejected by the wrapper")
                await handler(delivery)

            return reject_first

        @microbroker.hookimpl
        def on_error(self, error: BaseException) -> None:
            errors.append(error)

    plugin(Strict(), "strict")
    inbox = Inbox()
    async with memory(address) as broker:
        await broker.subscribe("s", inbox)
        await broker.publish("s", Message(b"x"))
        await inbox.wait_for(1)
    assert inbox.deliveries[0].attempt == 2  # nacked by the wrapper's exception, redelivered
    assert [str(e) for e in errors] == ["rejected by the wrapper"]


async def test_on_error_hook_that_raises_is_contained(
    address: str, plugin: Callable[..., str]
) -> None:
    class Clumsy:
        @microbroker.hookimpl
        def on_error(self, error: BaseException) -> None:
            raise RuntimeError("the error hook itself failed")

    async def fail_once(delivery: microbroker.Delivery) -> None:
        if delivery.attempt == 1:
            raise ValueError("x")

    plugin(Clumsy(), "clumsy")
    inbox = Inbox(fail_once)
    async with memory(address) as broker:
        await broker.subscribe("c", inbox)
        await broker.publish("c", Message(b"x"))
        await inbox.wait_for(2)


@dataclasses.dataclass
class Note:
    text: str


async def test_hooks_see_typed_publishes_and_deliveries(
    address: str, plugin: Callable[..., str]
) -> None:
    tracer = Tracer()
    plugin(tracer, "tracer")
    got = Inbox()
    service = microbroker.Service("hooked", broker=memory(address))

    @service.subscriber("notes")
    async def on_note(msg: Note, ctx: microbroker.Context) -> None:
        got.add((msg, ctx.metadata["TraceParent"]))

    async with service:
        await service.event("notes").publish(Note("n"))
        assert await got.wait_for(1) == [(Note("n"), "trace-1")]
    assert tracer.delivered == [("notes", "trace-1")]


async def test_hooks_apply_to_every_broker_however_and_whenever_it_was_made(
    address: str, plugin: Callable[..., str]
) -> None:
    """Hooks live in Broker.publish/subscribe: a broker built directly, or before the
    plugin was registered, is observed as one from get_broker is."""
    before = MemoryBroker(address)
    tracer = Tracer()
    name = plugin(tracer, "tracer")
    during = memory(address)
    inbox = Inbox()
    async with before, during:
        await during.subscribe("seen", inbox)
        await before.publish("seen", Message(b"from a broker built directly, earlier"))
        await during.publish("seen", Message(b"from get_broker"))
        await inbox.wait_for(2)
        microbroker.unregister_plugin(name)
        assert_uninstrumented(before)
        await before.publish("seen", Message(b"after the plugin left"))
        await inbox.wait_for(3)
    assert [body for _, _, body in tracer.published] == [
        b"from a broker built directly, earlier",
        b"from get_broker",
    ]
    # Delivery hooks wrap a subscription when it is made: this one keeps them.
    assert [topic for topic, _ in tracer.delivered] == ["seen", "seen", "seen"]


async def test_several_observers_run_in_pluggy_order_and_wrappers_still_work(
    address: str, plugin: Callable[..., str]
) -> None:
    calls: list[tuple[str, str]] = []

    class First:
        @microbroker.hookimpl
        def on_publish(self, message: Message, topic: str) -> None:  # a subset, reordered
            calls.append(("first", topic))

    class Second:
        @microbroker.hookimpl
        def on_publish(self, broker: microbroker.Broker, topic: str, message: Message) -> None:
            calls.append(("second", topic))

    plugin(First(), "first")
    plugin(Second(), "second")
    async with memory(address) as broker:
        await broker.publish("o", Message(b""))
    assert calls == [("second", "o"), ("first", "o")]  # as pluggy: the last registered first

    class Wrapper:
        @microbroker.hookimpl(wrapper=True)
        def on_publish(self, topic: str) -> Any:
            calls.append(("wrapper-before", topic))
            result = yield
            calls.append(("wrapper-after", topic))
            return result

    plugin(Wrapper(), "wrapper")
    calls.clear()
    async with memory(address) as broker:
        await broker.publish("p", Message(b""))
    assert calls == [
        ("wrapper-before", "p"),
        ("second", "p"),
        ("first", "p"),
        ("wrapper-after", "p"),
    ]
