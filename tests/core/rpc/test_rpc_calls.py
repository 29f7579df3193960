"""Client.call against Server.handle over the memory broker: bodies, errors, deadlines, retries."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from _helpers import WAIT, quiesce, wait_until
from google.protobuf import wrappers_pb2

import microbroker
from microbroker import Client, Context, RpcError, RpcTimeout, Service


@dataclass
class HelloRequest:
    name: str


@dataclass
class HelloReply:
    message: str


class Greeter:
    def __init__(self) -> None:
        self.calls = 0
        self.slow_first = 0.0
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def Hello(self, request: HelloRequest, ctx: Context) -> HelloReply:
        self.calls += 1
        if self.slow_first and self.calls == 1:
            await asyncio.sleep(self.slow_first)
        return HelloReply(f"hello {request.name}")

    async def Length(self, request: wrappers_pb2.StringValue) -> HelloReply:
        # A dataclass reply to a protobuf request: it cannot be protobuf, so it goes as JSON.
        return HelloReply(str(len(request.value)))

    async def Wait(self, request: dict[str, Any]) -> str:
        self.started.set()
        await self.release.wait()
        return "released"

    async def Numbers(self, request: int) -> AsyncIterator[int]:
        yield request


@pytest.fixture
async def greeter(broker: microbroker.Broker) -> AsyncIterator[Greeter]:
    greeter = Greeter()
    service = Service("greeter", broker=broker)
    service.handle(greeter)
    async with service:
        yield greeter


@pytest.fixture
def client(broker: microbroker.Broker) -> Client:
    return Client(broker)


async def test_the_design_call_form_and_the_request_form(greeter: Greeter, client: Client) -> None:
    reply = await client.call("greeter", "Greeter.Hello", HelloRequest(name="a"), HelloReply)
    assert reply == HelloReply("hello a")
    request = client.new_request("greeter", "Greeter.Hello", HelloRequest(name="b"))
    assert (request.service, request.endpoint, request.method) == (
        "greeter",
        "Greeter.Hello",
        "Greeter.Hello",
    )
    assert request.content_type == "application/json"
    assert await client.call(request, HelloReply) == HelloReply("hello b")


async def test_the_reply_content_type_follows_the_request_or_the_value(
    greeter: Greeter, client: Client
) -> None:
    request = client.new_request("greeter", "Greeter.Length", wrappers_pb2.StringValue(value="abc"))
    assert request.content_type == "application/protobuf"
    assert await client.call(request, HelloReply) == HelloReply("3")


async def test_bad_call_arguments_are_refused(client: Client) -> None:
    with pytest.raises(TypeError, match="call\\(\\) takes"):
        await client.call("greeter", HelloRequest(name="a"))  # type: ignore[call-overload]
    with pytest.raises(ValueError, match=r"Handler\.Method"):
        client.new_request("greeter", "Hello", {})
    with pytest.raises(ValueError, match="service name"):
        client.new_request("", "Greeter.Hello", {})
    with pytest.raises(ValueError, match="timeout"):
        await client.call("greeter", "Greeter.Hello", {}, dict, timeout=0)


async def test_an_undecodable_request_is_a_400_and_reaches_the_error_hooks(
    greeter: Greeter,
    client: Client,
    plugin: Callable[..., str],
) -> None:
    errors: list[BaseException] = []

    class Catcher:
        @microbroker.hookimpl
        def on_error(self, error: BaseException, delivery: microbroker.Delivery | None) -> None:
            errors.append(error)

    plugin(Catcher())
    with pytest.raises(RpcError) as bad:
        await client.call("greeter", "Greeter.Hello", {"nom": "a"}, HelloReply)
    assert bad.value.code == 400
    assert bad.value.status == "Bad Request"
    assert "HelloRequest" in bad.value.detail
    assert any(isinstance(e, microbroker.DecodeError) for e in errors)
    assert greeter.calls == 0


async def test_a_unary_call_to_a_streaming_endpoint_says_to_use_stream(
    greeter: Greeter, client: Client
) -> None:
    with pytest.raises(RpcError, match=r"client\.stream") as wrong:
        await client.call("greeter", "Greeter.Numbers", 1, int)
    assert wrong.value.code == 400


async def test_no_retry_unless_asked(greeter: Greeter, client: Client) -> None:
    greeter.slow_first = 0.5
    with pytest.raises(RpcTimeout):
        await client.call(
            "greeter", "Greeter.Hello", HelloRequest(name="a"), HelloReply, timeout=0.2
        )
    assert greeter.calls == 1, "a call without retries is sent once"


async def test_retries_when_asked_after_a_timeout(greeter: Greeter, client: Client) -> None:
    greeter.slow_first = 0.5
    reply = await client.call(
        "greeter", "Greeter.Hello", HelloRequest(name="a"), HelloReply, timeout=0.2, retries=2
    )
    assert reply == HelloReply("hello a")
    assert greeter.calls == 2


async def test_handler_errors_are_not_retried(broker: microbroker.Broker, client: Client) -> None:
    calls = 0

    class Flaky:
        async def Do(self, request: dict[str, Any]) -> dict[str, Any]:
            nonlocal calls
            calls += 1
            raise RuntimeError("no")

    service = Service("flaky", broker=broker)
    service.handle(Flaky())
    async with service:
        with pytest.raises(RpcError) as failed:
            await client.call("flaky", "Flaky.Do", {}, dict, retries=3)
    assert failed.value.code == 500
    assert failed.value.detail == "RuntimeError: no"
    assert calls == 1


async def test_stop_lets_a_running_call_finish(broker: microbroker.Broker, client: Client) -> None:
    greeter = Greeter()
    service = Service("greeter", broker=broker)
    service.handle(greeter)
    await service.start()
    call = asyncio.ensure_future(client.call("greeter", "Greeter.Wait", {}, str, timeout=WAIT))
    await asyncio.wait_for(greeter.started.wait(), WAIT)
    stopping = asyncio.ensure_future(service.server.stop(timeout=WAIT))
    await asyncio.sleep(0)
    greeter.release.set()
    await stopping
    assert await call == "released"


async def test_stop_answers_503_for_a_call_that_outlives_the_grace(
    broker: microbroker.Broker, client: Client
) -> None:
    greeter = Greeter()
    service = Service("greeter", broker=broker)
    service.handle(greeter)
    await service.start()
    call = asyncio.ensure_future(client.call("greeter", "Greeter.Wait", {}, str, timeout=WAIT))
    await asyncio.wait_for(greeter.started.wait(), WAIT)
    await service.server.stop(timeout=0.05)
    with pytest.raises(RpcError) as stopped:
        await call
    assert stopped.value.code == 503


async def test_rpc_concurrency_bounds_the_calls_a_server_runs_at_once(
    broker: microbroker.Broker, client: Client
) -> None:
    class Gated:
        def __init__(self) -> None:
            self.running = 0
            self.peak = 0
            self.gate = asyncio.Event()

        async def Pass(self, request: int) -> int:
            self.running += 1
            self.peak = max(self.peak, self.running)
            await self.gate.wait()
            self.running -= 1
            return request

    gated = Gated()
    service = Service("gated", broker=broker)
    service.server.rpc_concurrency = 2
    service.handle(gated)
    async with service:
        calls = [
            asyncio.ensure_future(client.call("gated", "Gated.Pass", n, int, timeout=WAIT))
            for n in range(6)
        ]
        await wait_until(lambda: gated.running == 2)
        await quiesce()
        assert gated.running == 2, "the other calls wait for a slot"
        gated.gate.set()
        assert sorted(await asyncio.gather(*calls)) == list(range(6))
    assert gated.peak == 2


class Steps:
    """Handlers that return at once, or after suspending in the ways a coroutine can."""

    async def Now(self, request: int) -> int:
        return request

    async def Yield(self, request: int) -> int:
        for _ in range(request):
            await asyncio.sleep(0)  # a bare yield to the loop
        return request

    async def Wait(self, request: int) -> int:
        await asyncio.sleep(0.001)  # a future
        return request * 2

    async def FailLater(self, request: int) -> int:
        await asyncio.sleep(0)
        raise ValueError("after a step")

    async def OwnTimeout(self, request: int) -> int:
        await asyncio.sleep(0)
        raise TimeoutError("the handler's own")

    async def Inner(self, request: int) -> int:
        try:
            async with asyncio.timeout(0.01):  # the handler's task is the one that times out
                await asyncio.sleep(WAIT)
        except TimeoutError:
            return -request
        return request


async def test_handlers_that_suspend_or_not_answer_alike(
    broker: microbroker.Broker, client: Client
) -> None:
    service = Service("steps", broker=broker)
    service.handle(Steps())
    async with service:
        assert await client.call("steps", "Steps.Now", 1, int) == 1
        assert await client.call("steps", "Steps.Yield", 3, int) == 3
        assert await client.call("steps", "Steps.Wait", 2, int) == 4
        assert await client.call("steps", "Steps.Inner", 5, int) == -5
        with pytest.raises(RpcError) as failed:
            await client.call("steps", "Steps.FailLater", 0, int)
        assert (failed.value.code, failed.value.detail) == (500, "ValueError: after a step")
        with pytest.raises(RpcError) as own:
            await client.call("steps", "Steps.OwnTimeout", 0, int)
        assert own.value.code == 500, "a TimeoutError of the handler's own is not the deadline"


async def test_handle_after_start_serves_too(broker: microbroker.Broker, client: Client) -> None:
    service = Service("late", broker=broker)
    async with service:
        service.handle(Greeter())
        # On a started server the endpoints are bound in the background, as subscribe() does.
        await asyncio.sleep(0.05)
        reply = await client.call("late", "Greeter.Hello", HelloRequest(name="x"), HelloReply)
    assert reply.message == "hello x"


async def test_rpc_error_has_go_micro_json_form() -> None:
    error = RpcError("greeter", 404, "no such thing")
    assert json.loads(str(error)) == {
        "id": "greeter",
        "code": 404,
        "detail": "no such thing",
        "status": "Not Found",
    }
    timeout = RpcTimeout("go.micro.client", "too slow")
    assert (timeout.code, timeout.status) == (408, "Request Timeout")
    assert isinstance(timeout, TimeoutError)
    assert isinstance(timeout, RpcError)
    assert isinstance(error, microbroker.MicrobrokerError)
