"""NATS's native request/reply, exposed for the RPC layer: serve() and request()."""

from __future__ import annotations

import asyncio

import pytest
from support.nats_server import NatsServer

import microbroker
from microbroker_nats import NatsBroker, NatsDelivery, NoResponders, RequestTimeout


@pytest.fixture(params=[False, True], ids=["core", "jetstream"])
def jetstream(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@pytest.fixture
def server(request: pytest.FixtureRequest, jetstream: bool, nats_server: NatsServer) -> NatsServer:
    if jetstream:
        js_server: NatsServer = request.getfixturevalue("jetstream_server")
        return js_server
    return nats_server


async def test_request_gets_the_reply_with_its_headers(server: NatsServer, jetstream: bool) -> None:
    async def greet(delivery: NatsDelivery) -> microbroker.Message:
        assert delivery.reply_to
        name = delivery.message.body.decode()
        return microbroker.Message(f"hello {name}".encode(), {"X-Served-By": "greeter"})

    async with (
        NatsBroker(server.url, jetstream=jetstream) as service,
        NatsBroker(server.url, jetstream=jetstream) as client,
    ):
        await service.serve("greeter.hello", greet)
        reply = await client.request("greeter.hello", microbroker.Message(b"ada", {"X-Trace": "1"}))
        assert reply.body == b"hello ada"
        assert reply.header("x-served-by") == "greeter"


async def test_servers_in_a_queue_answer_each_request_once(nats_server: NatsServer) -> None:
    answered: dict[str, int] = {"a": 0, "b": 0}

    def responder(name: str):  # type: ignore[no-untyped-def]
        async def respond(delivery: NatsDelivery) -> microbroker.Message:
            answered[name] += 1
            return microbroker.Message(name.encode())

        return respond

    async with (
        NatsBroker(nats_server.url) as one,
        NatsBroker(nats_server.url) as two,
        NatsBroker(nats_server.url) as client,
    ):
        await one.serve("work.do", responder("a"), queue="workers")
        await two.serve("work.do", responder("b"), queue="workers")
        replies = [
            (await client.request("work.do", microbroker.Message(b"x"))).body for _ in range(40)
        ]
    assert sum(answered.values()) == 40
    assert sorted(replies) == sorted([b"a"] * answered["a"] + [b"b"] * answered["b"])


async def test_no_responders_and_timeout_are_distinct_errors(nats_server: NatsServer) -> None:
    async def too_slow(delivery: NatsDelivery) -> microbroker.Message:
        await asyncio.sleep(5)
        return microbroker.Message(b"late")

    async with NatsBroker(nats_server.url) as broker:
        with pytest.raises(NoResponders, match="nobody serves"):
            await broker.request("nobody.home", microbroker.Message(b"?"), timeout=10)
        await broker.serve("slow.service", too_slow)
        with pytest.raises(RequestTimeout) as caught:
            await broker.request("slow.service", microbroker.Message(b"?"), timeout=0.2)
        outcome = caught.value
        assert "within 0.2s" in str(outcome)
        with pytest.raises(microbroker.InvalidTopic):
            await broker.request("a.*", microbroker.Message(b"?"))


async def test_a_failing_responder_answers_with_micro_error(nats_server: NatsServer) -> None:
    errors: list[BaseException] = []

    class Catcher:
        @microbroker.hookimpl
        def on_error(self, error: BaseException, delivery: microbroker.Delivery | None) -> None:
            errors.append(error)

    async def broken(delivery: NatsDelivery) -> microbroker.Message:
        raise ValueError("no such order")

    catcher = Catcher()
    microbroker.register_plugin(catcher, name="nats-test-catcher")
    try:
        async with NatsBroker(nats_server.url) as broker:
            await broker.serve("orders.get", broken)
            reply = await broker.request("orders.get", microbroker.Message(b"7"))
            assert reply.header("Micro-Error") == "ValueError: no such order"
            assert any(isinstance(e, ValueError) for e in errors)
    finally:
        microbroker.unregister_plugin(catcher)


async def test_a_request_is_checked_as_a_publish_is(nats_server: NatsServer) -> None:
    """request() goes around Broker.publish: it applies the same header and size checks."""

    async def echo(delivery: NatsDelivery) -> microbroker.Message:
        return microbroker.Message(delivery.message.body)

    async with NatsBroker(nats_server.url) as broker:
        await broker.serve("checked.echo", echo)
        with pytest.raises(microbroker.InvalidHeader):
            await broker.request("checked.echo", microbroker.Message(b"x", {"X": "a\r\nY: b"}))
        limit = broker.capabilities.max_message_size
        assert limit is not None
        with pytest.raises(microbroker.MessageTooLarge):
            await broker.request("checked.echo", microbroker.Message(b"\0" * (limit + 1)))
        reply = await broker.request("checked.echo", microbroker.Message(b"\1" * limit))
        assert reply.body == b"\1" * limit
        assert broker.connected


async def test_concurrent_requests_get_their_own_replies_and_a_late_one_is_dropped(
    nats_server: NatsServer,
) -> None:
    """Replies share one inbox per connection: each finds its own request, none another's."""
    release = asyncio.Event()
    arrived = asyncio.Event()

    async def echo(delivery: NatsDelivery) -> microbroker.Message:
        body = delivery.message.body
        if body == b"late":
            arrived.set()
            await release.wait()
        return microbroker.Message(body, {"X-Echo": body.decode()})

    async with (
        NatsBroker(nats_server.url) as service,
        NatsBroker(nats_server.url) as client,
    ):
        await service.serve("echo.each", echo)
        with pytest.raises(RequestTimeout):
            await client.request("echo.each", microbroker.Message(b"late"), timeout=0.2)
        release.set()  # the late reply goes to a request that gave up
        bodies = [str(n).encode() for n in range(50)]
        replies = await asyncio.gather(
            *(client.request("echo.each", microbroker.Message(b)) for b in bodies)
        )
        assert [r.body for r in replies] == bodies
        assert [r.header("x-echo") for r in replies] == [b.decode() for b in bodies]
        # A request cancelled while it waits for its reply: the next one works.
        release.clear()
        arrived.clear()
        waiting = asyncio.ensure_future(client.request("echo.each", microbroker.Message(b"late")))
        await asyncio.wait_for(arrived.wait(), 10)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        release.set()
        assert (await client.request("echo.each", microbroker.Message(b"after"))).body == b"after"
