"""Service, Event, Client and Server: typed messages over the broker, as in go-micro."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from typing import Any

import pytest
from _helpers import Inbox, quiesce, wait_until
from _proto import OrderCancelled, OrderCreated

import microbroker
from microbroker import Message, codecs


@dataclasses.dataclass
class Greeting:
    name: str
    times: int = 1


class Errors:
    """An ``on_error`` plugin recording what it is told."""

    def __init__(self) -> None:
        self.seen: list[tuple[BaseException, microbroker.Delivery | None]] = []

    @microbroker.hookimpl
    def on_error(self, error: BaseException, delivery: microbroker.Delivery | None) -> None:
        self.seen.append((error, delivery))

    def of_type(self, kind: type[BaseException]) -> list[Any]:
        return [(e, d) for e, d in self.seen if isinstance(e, kind)]


@pytest.fixture
def errors(plugin: Callable[..., str]) -> Errors:
    recorder = Errors()
    plugin(recorder, f"errors-{id(recorder)}")
    return recorder


def memory(address: str, **options: Any) -> microbroker.Broker:
    return microbroker.get_broker("memory", address=address, **options)


# Typed subscribers ----------------------------------------------------------------------


async def test_subscribers_decode_by_annotation(address: str) -> None:
    got = Inbox()
    service = microbroker.Service("typed", broker=memory(address))

    @service.subscriber("orders")
    async def on_order(msg: OrderCreated, ctx: microbroker.Context) -> None:
        got.add(("proto", msg, ctx.content_type))

    @service.subscriber("greetings")
    async def on_greeting(msg: Greeting) -> None:
        got.add(("dataclass", msg, None))

    @service.subscriber("dicts")
    async def on_dict(msg: dict[str, Any]) -> None:
        got.add(("dict", msg, None))

    @service.subscriber("texts")
    async def on_text(msg: str) -> None:
        got.add(("text", msg, None))

    @service.subscriber("raw")
    async def on_raw(msg: Message, ctx: microbroker.Context) -> None:
        got.add(("message", msg.body, ctx.metadata.get("x")))

    async with service:
        await service.event("orders").publish(OrderCreated(id=1, item="book"))
        await service.event("greetings").publish(Greeting("ada", 2))
        await service.event("dicts").publish({"k": [1, 2]})
        await service.event("texts", content_type=codecs.TEXT).publish("hello")
        await service.broker.publish("raw", Message(b"\x00bytes", {"x": "y"}))
        await got.wait_for(5)
    by_kind = {kind: (value, extra) for kind, value, extra in got.deliveries}
    assert by_kind["proto"] == (OrderCreated(id=1, item="book"), codecs.PROTOBUF)
    assert by_kind["dataclass"] == (Greeting("ada", 2), None)
    assert by_kind["dict"] == ({"k": [1, 2]}, None)
    assert by_kind["text"] == ("hello", None)
    assert by_kind["message"] == (b"\x00bytes", "y")


async def test_protobuf_as_json_by_content_type(address: str) -> None:
    got = Inbox()
    service = microbroker.Service("json-proto", broker=memory(address))

    @service.subscriber("orders")
    async def on_order(msg: OrderCreated, ctx: microbroker.Context) -> None:
        got.add((msg, ctx.content_type, ctx.delivery.message.body))

    async with service:
        await service.event("orders", content_type=codecs.JSON).publish(OrderCreated(id=3))
        msg, content_type, body = (await got.wait_for(1))[0]
    assert msg == OrderCreated(id=3)
    assert content_type == codecs.JSON
    assert json.loads(body) == {"id": "3"}


async def test_metadata_travels_as_go_micro_headers(address: str) -> None:
    raw = Inbox()
    typed = Inbox()
    broker = memory(address)
    service = microbroker.Service("meta", broker=broker)

    @service.subscriber("greetings")
    async def on_greeting(msg: Greeting, ctx: microbroker.Context) -> None:
        typed.add(ctx)

    async with service:
        await broker.subscribe("greetings", raw)
        event = service.event("greetings")
        metadata = {"Tenant": "a", "trace-id": "t1", "micro-topic": "spoofed"}
        await event.publish(Greeting("x"), metadata=metadata)
        await event.publish(Greeting("y"), metadata=metadata)
        await raw.wait_for(2)
        await typed.wait_for(2)
    headers = [d.message.headers for d in raw.deliveries]
    for h in headers:
        assert h["Content-Type"] == codecs.JSON
        assert h["Micro-Topic"] == "greetings"  # reserved names cannot be overridden
        assert h["Tenant"] == "a"
        assert h["trace-id"] == "t1"
        assert h["Micro-ID"]
    assert headers[0]["Micro-ID"] != headers[1]["Micro-ID"]  # unique per message
    ctx = typed.deliveries[0]
    assert ctx.metadata["tenant"] == "a"  # case-insensitive
    assert ctx.metadata["TENANT"] == "a"
    assert ctx.metadata["content-type"] == codecs.JSON
    assert "MICRO-ID" in ctx.metadata
    assert ctx.message_id == headers[0]["Micro-ID"]
    assert ctx.topic == "greetings"
    assert ctx.attempt == 1
    assert "Tenant" in list(ctx.metadata)  # the original case is kept


def test_message_ids_are_unique() -> None:
    from microbroker._headers import new_message_id

    ids = {new_message_id() for _ in range(10_000)}
    assert len(ids) == 10_000


def _published_ids(client: microbroker.Client, count: int) -> list[str]:
    return [
        client.build_message("t", {"n": n}, None, None).headers["Micro-ID"] for n in range(count)
    ]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_process_publishes_message_ids_of_its_own() -> None:
    """A child forked after its parent published must not repeat the parent's Micro-Ids.

    JetStream deduplicates by Micro-Id (the default msg_id): a repeated id
    from a forked worker (multiprocessing's default start method on Linux)
    would be dropped as a duplicate, a message lost.
    """
    client = microbroker.Client(microbroker.get_broker("memory"))
    _published_ids(client, 3)  # the parent has published before it forks
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent, then out without pytest's cleanup
        try:
            os.write(write, "\n".join(_published_ids(client, 100)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = pipe.read().split("\n")
    os.waitpid(pid, 0)
    parent = _published_ids(client, 100)
    assert len(child) == 100
    assert not set(child) & set(parent), "a forked child repeated its parent's message ids"


def test_metadata_mapping() -> None:
    meta = microbroker.Metadata({"Content-Type": "a"}, trace="t")
    meta["content-type"] = "b"
    assert meta.to_headers() == {"Content-Type": "b", "trace": "t"}
    del meta["TRACE"]
    assert len(meta) == 1
    with pytest.raises(TypeError, match="str"):
        meta["n"] = 1  # type: ignore[assignment]


async def test_client_new_message_and_publish(address: str) -> None:
    raw = Inbox()
    async with memory(address) as broker:
        client = microbroker.Client(broker)
        await broker.subscribe("c", raw)
        publication = client.new_message("c", Greeting("z"))
        assert publication.content_type == codecs.JSON
        await client.publish(publication, metadata={"k": "v"})
        delivery = (await raw.wait_for(1))[0]
    assert json.loads(delivery.message.body) == {"name": "z", "times": 1}
    assert delivery.message.headers["k"] == "v"


async def test_event_publish_encode_error_sends_nothing(address: str) -> None:
    raw = Inbox()
    async with memory(address) as broker:
        await broker.subscribe("bad", raw)
        event = microbroker.Event("bad", microbroker.Client(broker), content_type=codecs.PROTOBUF)
        with pytest.raises(microbroker.EncodeError, match="application/protobuf"):
            await event.publish({"not": "protobuf"})
        await broker.publish("bad", Message(b"sentinel"))
        await raw.wait_for(1)
    assert raw.bodies == [b"sentinel"]


def test_event_topic_is_checked() -> None:
    with pytest.raises(microbroker.InvalidTopic):
        microbroker.Event("", microbroker.Client(memory("unused")))


# Undecodable bodies -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "body", "into_name"),
    [
        (codecs.PROTOBUF, b"\xff\xff\xff not protobuf", "OrderCreated"),
        (codecs.JSON, b"{not json", "Greeting"),
        (codecs.JSON, b"[1, 2]", "Greeting"),
        (None, b"\xff\xff\xff", "OrderCreated"),  # no Content-Type: inferred from the annotation
        ("application/xml", b"<a/>", "Greeting"),  # no codec for it
    ],
)
async def test_undecodable_raw_publish_raises_decode_error_to_on_error(
    address: str, errors: Errors, content_type: str | None, body: bytes, into_name: str
) -> None:
    into = {"OrderCreated": OrderCreated, "Greeting": Greeting}[into_name]
    handled = Inbox()
    broker = memory(address)
    service = microbroker.Service("decode", broker=broker)

    async def handler(msg: Any) -> None:
        handled.add(msg)

    handler.__annotations__["msg"] = into
    service.server.subscribe(service.server.new_subscriber("typed", handler))
    good = OrderCreated(id=9) if into is OrderCreated else Greeting("good")
    headers = {} if content_type is None else {"Content-Type": content_type}
    async with service:
        await broker.publish("typed", Message(body, dict(headers)))
        await service.event("typed").publish(good)
        await handled.wait_for(1)
        # Decoding the same bytes again cannot succeed: given up at once (and reported).
        await wait_until(lambda: len(errors.of_type(microbroker.GivenUp)) == 1)
        await quiesce()
    assert handled.deliveries == [good]  # the handler never saw the bad body
    decode_errors = errors.of_type(microbroker.DecodeError)
    assert [d.attempt for _, d in decode_errors] == [1]  # tried once, not redelivered
    error, delivery = decode_errors[0]
    assert error.topic == "typed"
    assert error.content_type == content_type
    assert error.expected is into
    assert error.cause is not None
    assert delivery.message.body == body
    assert delivery.rejected
    assert errors.of_type(microbroker.GivenUp)[0][0].dead_letter == "typed.dlq"
    message = str(error)
    assert "typed" in message
    assert into.__qualname__ in message
    assert isinstance(error, microbroker.CodecError)


async def test_subscription_keeps_running_after_decode_errors(address: str, errors: Errors) -> None:
    handled = Inbox()
    broker = memory(address)
    service = microbroker.Service("keeps-running", broker=broker)

    @service.subscriber("mixed")
    async def on_order(msg: OrderCreated) -> None:
        handled.add(msg.id)

    async with service:
        event = service.event("mixed")
        for i in range(20):
            if i % 3 == 0:
                await broker.publish(
                    "mixed", Message(b"\xff\xff", {"Content-Type": codecs.PROTOBUF})
                )
            await event.publish(OrderCreated(id=i))
        await handled.wait_for(20)
        await quiesce()
    assert handled.deliveries == list(range(20))  # nothing else lost, order kept
    assert len(errors.of_type(microbroker.DecodeError)) == 7


# Handler errors and manual settlement ---------------------------------------------------


async def test_typed_handler_error_is_reported_and_redelivered(
    address: str, errors: Errors
) -> None:
    seen = Inbox()
    service = microbroker.Service("flaky", broker=memory(address))

    @service.subscriber("flaky")
    async def flaky(msg: Greeting, ctx: microbroker.Context) -> None:
        seen.add(ctx.attempt)
        if ctx.attempt == 1:
            raise ValueError("first attempt fails")

    async with service:
        await service.event("flaky").publish(Greeting("again"))
        await seen.wait_for(2)
        await quiesce()
    assert seen.deliveries == [1, 2]
    assert [str(e) for e, _ in errors.of_type(ValueError)] == ["first attempt fails"]


async def test_manual_ack_through_the_context(address: str) -> None:
    seen = Inbox()
    service = microbroker.Service("manual", broker=memory(address))

    # A quick backoff: the quiet period below outlasts any redelivery that should not happen.
    @service.subscriber(
        "manual", auto_ack=False, retry=microbroker.RetryPolicy(backoff=0.001, max_backoff=0.005)
    )
    async def manual(msg: Greeting, ctx: microbroker.Context) -> None:
        seen.add(ctx.attempt)
        if ctx.attempt == 1:
            await ctx.nack(delay=0)
        else:
            await ctx.ack()

    async with service:
        await service.event("manual").publish(Greeting("m"))
        await seen.wait_for(2)
        await asyncio.sleep(0.05)
        await quiesce()
    assert seen.deliveries == [1, 2]


# Server and Service ---------------------------------------------------------------------


async def test_register_subscriber(address: str) -> None:
    got = Inbox()
    broker = memory(address)
    server = microbroker.Server("svc", broker)

    async def handler(msg: Greeting) -> None:
        got.add(msg)

    subscription = microbroker.register_subscriber("reg", server, handler, queue="q")
    assert subscription in server.subscribers
    assert subscription.queue == "q"
    assert subscription.message_type is Greeting
    with pytest.raises(microbroker.MicrobrokerError, match="already registered"):
        server.subscribe(subscription)
    async with broker:
        await server.start()
        assert server.started
        await microbroker.Client(broker).publish(
            microbroker.Client(broker).new_message("reg", Greeting("r"))
        )
        assert await got.wait_for(1) == [Greeting("r")]
        await server.stop()
        assert not server.started


def test_subscriber_signatures_are_checked() -> None:
    server = microbroker.Server("svc", memory("unused"))

    def not_async(msg: Greeting) -> None:
        pass

    async def too_many(msg: Greeting, ctx: microbroker.Context, extra: int) -> None:
        pass

    async def none() -> None:
        pass

    assert server.new_subscriber("t", not_async).blocking, "a plain function runs in a thread"
    with pytest.raises(TypeError, match="must be a function"):
        server.new_subscriber("t", 42)
    with pytest.raises(TypeError, match="3 positional"):
        server.new_subscriber("t", too_many)
    with pytest.raises(TypeError, match="0 positional"):
        server.new_subscriber("t", none)
    with pytest.raises(microbroker.InvalidTopic):
        server.new_subscriber("", too_many)


async def test_callable_object_subscriber(address: str) -> None:
    got = Inbox()

    class Handler:
        async def __call__(self, msg: Greeting, ctx: microbroker.Context) -> None:
            got.add(msg)

    service = microbroker.Service("callable", broker=memory(address))
    service.server.subscribe(service.server.new_subscriber("obj", Handler()))
    async with service:
        await service.event("obj").publish(Greeting("o"))
        assert await got.wait_for(1) == [Greeting("o")]


async def test_async_with_service_connects_and_disconnects(address: str) -> None:
    broker = memory(address)
    service = microbroker.Service("ctx", broker=broker)
    assert repr(service) == "<Service 'ctx' broker='memory'>"
    async with service as entered:
        assert entered is service
        assert broker.connected
        assert service.server.started
    assert not broker.connected
    assert not service.server.started


async def test_service_leaves_a_broker_it_did_not_connect(address: str) -> None:
    async with memory(address) as broker:
        async with microbroker.Service("borrowed", broker=broker):
            pass
        assert broker.connected


def test_service_takes_broker_client_and_server_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MICRO_BROKER", "memory")
    monkeypatch.setenv("MICRO_BROKER_ADDRESS", "env-service")
    monkeypatch.setenv("MICRO_CLIENT", "default")
    monkeypatch.delenv("MICRO_SERVER", raising=False)
    service = microbroker.Service("env")
    assert str(service.broker) == "memory"
    assert service.broker.address == "env-service"
    assert type(service.client) is microbroker.Client
    assert type(service.server) is microbroker.Server
    assert service.client.broker is service.broker
    assert service.server.broker is service.broker
    monkeypatch.setenv("MICRO_CLIENT", "fancy")
    # Made on first use (so that a test can give the service a broker first): the error
    # comes when the client is first needed, by an event or a subscriber.
    lazy = microbroker.Service("env")
    with pytest.raises(microbroker.PluginNotFound, match="no client named 'fancy'"):
        lazy.event("orders")


def test_service_run_stops_on_sigterm() -> None:
    program = textwrap.dedent(
        """
        import asyncio, microbroker

        async def main():
            service = microbroker.Service(
                "sig", broker=microbroker.get_broker("memory", address="sig")
            )

            @service.subscriber("t")
            async def handler(msg: dict) -> None:
                pass

            run = asyncio.create_task(service.run())
            while not service.server.started:
                await asyncio.sleep(0.01)
            print("ready", flush=True)
            await run
            print("stopped", service.server.started, service.broker.connected, flush=True)

        asyncio.run(main())
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", program],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert out.split() == ["stopped", "False", "False"]


async def test_service_run_ends_when_cancelled(address: str) -> None:
    broker = memory(address)
    service = microbroker.Service("cancel", broker=broker)
    run = asyncio.create_task(service.run(signals=()))
    await wait_until(lambda: service.server.started)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert not broker.connected


async def test_two_services_on_one_bus(address: str) -> None:
    """A publisher service and a subscriber service built separately reach each other."""
    got = Inbox()
    consumer = microbroker.Service("consumer", broker=memory(address))

    @consumer.subscriber("orders.cancelled", queue="billing")
    async def on_cancel(msg: OrderCancelled) -> None:
        got.add(msg.reason)

    producer = microbroker.Service("producer", broker=memory(address))
    async with consumer, producer:
        await producer.event("orders.cancelled").publish(OrderCancelled(reason="late"))
        assert await got.wait_for(1) == ["late"]


async def test_undecodable_body_for_a_subscriber_of_any_type(address: str, errors: Errors) -> None:
    """Without an annotation the body is JSON-decoded; bad JSON is a DecodeError too."""
    got = Inbox()
    broker = memory(address)
    service = microbroker.Service("any", broker=broker)

    @service.subscriber("any")
    async def on_any(msg, ctx):  # type: ignore[no-untyped-def]
        got.add(msg)

    async with service:
        await broker.publish("any", Message(b"{bad"))
        await broker.publish("any", Message(b'{"ok": true}'))
        assert await got.wait_for(1) == [{"ok": True}]
        await wait_until(lambda: len(errors.of_type(microbroker.DecodeError)) == 1)
    assert errors.of_type(microbroker.DecodeError)[0][0].content_type is None


async def test_content_type_parameters_and_case_do_not_matter(address: str) -> None:
    got = Inbox()
    broker = memory(address)
    service = microbroker.Service("params", broker=broker)

    @service.subscriber("p")
    async def on_greeting(msg: Greeting) -> None:
        got.add(msg.times)

    async with service:
        for i in range(100):
            content_type = f"Application/JSON; charset=utf-8; n={i}"
            body = json.dumps({"name": "p", "times": i}).encode()
            await broker.publish("p", Message(body, {"content-type": content_type}))
        assert await got.wait_for(100) == list(range(100))


async def test_a_subscription_failing_in_the_background_is_reported(
    address: str, errors: Errors
) -> None:
    """Subscribing on a started server happens in the background; a failure is not silent."""
    got = Inbox()
    service = microbroker.Service("late", broker=memory(address))

    @service.subscriber("fine")
    async def fine(msg: dict[str, Any]) -> None:
        got.add(msg)

    async with service:

        @service.subscriber("a.>.b")  # not a valid pattern on the memory broker
        async def bad(msg: dict[str, Any]) -> None:
            pass

        await wait_until(lambda: bool(errors.of_type(microbroker.InvalidTopic)))
        await service.event("fine").publish({"ok": 1})  # the others keep working
        assert await got.wait_for(1) == [{"ok": 1}]
    error, delivery = errors.of_type(microbroker.InvalidTopic)[0]
    assert "a.>.b" in str(error)
    assert delivery is None


async def test_failed_start_leaves_no_connection_open(address: str) -> None:
    broker = memory(address)
    service = microbroker.Service("fails", broker=broker)

    @service.subscriber("ok")
    async def ok(msg: dict[str, Any]) -> None:
        pass

    @service.subscriber("a.>.b")  # refused by the broker when the server starts
    async def bad(msg: dict[str, Any]) -> None:
        pass

    with pytest.raises(microbroker.InvalidTopic):
        async with service:
            pytest.fail("the service must not start")
    assert not broker.connected
    assert not service.server.started
