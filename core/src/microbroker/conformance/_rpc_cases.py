"""The RPC conformance cases: Client.call and Client.stream against Server.handle over the broker.

Mixed into :class:`BrokerConformance`, so that every broker is held to them:
RPC is built on publish and subscribe (or on the broker's native
request/reply), and must work unchanged on every transport.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import TYPE_CHECKING, Any

import pytest
from google.protobuf import wrappers_pb2

from .._client import Client
from .._context import Context
from .._errors import RpcError, RpcTimeout
from .._service import Service
from ._harness import Harness

Case = Callable[[Harness], Coroutine[Any, Any, None]]


def _service_name(case: str) -> str:
    """A service name unique to this case, valid as a topic part and a queue name everywhere."""
    return f"conformance-{case}-{uuid.uuid4().hex[:10]}"


class Greeter:
    """The endpoints the cases call."""

    def __init__(self, instance: str = "a") -> None:
        self.instance = instance
        self.served: Counter[str] = Counter()
        self.cancelled = asyncio.Event()
        self.closed = asyncio.Event()
        self.produced = 0

    async def Hello(self, request: wrappers_pb2.StringValue) -> wrappers_pb2.StringValue:
        self.served[request.value] += 1
        return wrappers_pb2.StringValue(value=f"hello {request.value}")

    async def Describe(self, request: dict[str, Any], ctx: Context) -> dict[str, Any]:
        return {
            "echo": request,
            "tenant": ctx.metadata.get("tenant"),
            "endpoint": ctx.metadata.get("micro-endpoint"),
            "instance": self.instance,
        }

    async def Fail(self, request: dict[str, Any]) -> dict[str, Any]:
        raise ValueError(f"cannot handle {request.get('what')}")

    async def Forbid(self, request: dict[str, Any]) -> dict[str, Any]:
        raise RpcError("conformance", 403, "not for you")

    async def Slow(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            await asyncio.sleep(request["seconds"])
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return {"slept": request["seconds"]}

    async def Count(self, request: dict[str, int]) -> AsyncIterator[dict[str, int]]:
        try:
            for n in range(request["to"]):
                self.produced = n + 1
                yield {"n": n}
        finally:
            self.closed.set()

    async def FailAfter(self, request: dict[str, int]) -> AsyncIterator[dict[str, int]]:
        for n in range(request["items"]):
            yield {"n": n}
        raise RuntimeError("broke mid-stream")

    async def Shout(self, words: AsyncIterator[str]) -> AsyncIterator[str]:
        async for word in words:
            yield word.upper()

    async def Total(self, numbers: AsyncIterator[int]) -> int:
        return sum([n async for n in numbers])


class RpcConformance:
    """RPC over the broker: unary calls, errors, deadlines, load sharing, streams."""

    if TYPE_CHECKING:

        def _run(self, harness: Harness, case: Case) -> None: ...

    @staticmethod
    async def _serve(h: Harness, name: str, greeter: Greeter) -> Service:
        service = Service(name, broker=await h.broker())
        service.handle(greeter)
        await service.start()
        await h.settle()
        return service

    def test_rpc_call_protobuf_and_json(self, conformance: Harness) -> None:
        """Both call forms, protobuf and JSON bodies, metadata reaching the handler."""

        async def case(h: Harness) -> None:
            name = _service_name("call")
            server = await self._serve(h, name, Greeter())
            client = Client(await h.broker())
            try:
                reply = await client.call(
                    name, "Greeter.Hello", wrappers_pb2.StringValue(value="a"),
                    wrappers_pb2.StringValue,
                    timeout=h.timeout,
                )  # fmt: skip
                assert reply == wrappers_pb2.StringValue(value="hello a")
                request = client.new_request(
                    name,
                    "Greeter.Hello",
                    wrappers_pb2.StringValue(value="b"),
                    content_type="application/json",
                )
                reply = await client.call(request, wrappers_pb2.StringValue, timeout=h.timeout)
                assert reply.value == "hello b", "a protobuf message in its JSON mapping"
                described = await client.call(
                    client.new_request(name, "Greeter.Describe", {"k": [1, 2]}),
                    dict,
                    metadata={"Tenant": "t1"},
                    timeout=h.timeout,
                )
                assert described["echo"] == {"k": [1, 2]}
                assert described["tenant"] == "t1", "call metadata must reach ctx.metadata"
                assert described["endpoint"] == "Greeter.Describe"
            finally:
                await server.stop()

        self._run(conformance, case)

    def test_rpc_errors_reach_the_caller_with_go_micro_shape(self, conformance: Harness) -> None:
        """A handler exception is a 500 RpcError, an RpcError keeps its code, unknown is 404."""

        async def case(h: Harness) -> None:
            name = _service_name("errors")
            server = await self._serve(h, name, Greeter())
            client = Client(await h.broker())
            try:
                with pytest.raises(RpcError) as failed:
                    await client.call(name, "Greeter.Fail", {"what": "x"}, dict, timeout=h.timeout)
                assert failed.value.code == 500
                assert failed.value.id == name
                assert "cannot handle x" in failed.value.detail
                assert failed.value.status == "Internal Server Error"
                with pytest.raises(RpcError) as forbidden:
                    await client.call(name, "Greeter.Forbid", {}, dict, timeout=h.timeout)
                assert (forbidden.value.code, forbidden.value.detail) == (403, "not for you")
                assert forbidden.value.id == "conformance"
                with pytest.raises(RpcError) as unknown:
                    await client.call(name, "Greeter.Missing", {}, dict, timeout=h.timeout)
                assert unknown.value.code == 404
                assert "Greeter.Missing" in unknown.value.detail
                assert not isinstance(unknown.value, RpcTimeout)
                # The service keeps serving after errors.
                reply = await client.call(
                    name, "Greeter.Hello", wrappers_pb2.StringValue(value="after"),
                    wrappers_pb2.StringValue, timeout=h.timeout,
                )  # fmt: skip
                assert reply.value == "hello after"
            finally:
                await server.stop()

        self._run(conformance, case)

    def test_rpc_deadline_times_out_and_cancels_the_handler(self, conformance: Harness) -> None:
        """A call past its deadline raises RpcTimeout (408) and the server drops the work."""

        async def case(h: Harness) -> None:
            name = _service_name("deadline")
            greeter = Greeter()
            server = await self._serve(h, name, greeter)
            client = Client(await h.broker())
            try:
                with pytest.raises(RpcTimeout) as timed_out:
                    await client.call(name, "Greeter.Slow", {"seconds": 60}, dict, timeout=0.5)
                assert timed_out.value.code == 408
                assert isinstance(timed_out.value, TimeoutError)
                await asyncio.wait_for(greeter.cancelled.wait(), h.timeout)
                nobody = _service_name("nobody")
                with pytest.raises(RpcError) as missing:
                    await client.call(nobody, "Greeter.Hello", {}, dict, timeout=0.5)
                assert missing.value.code in (408, 503), "no instance: a timeout or 503"
            finally:
                await server.stop()

        self._run(conformance, case)

    def test_rpc_instances_share_the_load(self, conformance: Harness) -> None:
        """Two instances of one service: each call is served once, by one of them."""
        if not conformance.capabilities.queue_groups:
            pytest.skip("the broker does not declare queue_groups")

        async def case(h: Harness) -> None:
            name = _service_name("load")
            first, second = Greeter("first"), Greeter("second")
            servers = [await self._serve(h, name, first), await self._serve(h, name, second)]
            client = Client(await h.broker())
            try:
                instances: Counter[str] = Counter()
                for n in range(40):
                    reply = await client.call(
                        name, "Greeter.Describe", {"n": n}, dict, timeout=h.timeout
                    )
                    assert reply["echo"] == {"n": n}
                    instances[reply["instance"]] += 1
                assert sum(instances.values()) == 40
                assert set(instances) == {"first", "second"}, f"load not shared: {instances}"
            finally:
                for server in servers:
                    await server.stop()

        self._run(conformance, case)

    def test_rpc_concurrent_callers_get_their_own_replies(self, conformance: Harness) -> None:
        """64 callers at once on one client: every reply reaches the call that asked for it."""

        async def case(h: Harness) -> None:
            name = _service_name("concurrent")
            greeter = Greeter()
            server = await self._serve(h, name, greeter)
            client = Client(await h.broker())
            try:

                async def caller(worker: int) -> None:
                    for n in range(4):
                        value = f"{worker}-{n}"
                        reply = await client.call(
                            name, "Greeter.Hello", wrappers_pb2.StringValue(value=value),
                            wrappers_pb2.StringValue, timeout=h.timeout * 2,
                        )  # fmt: skip
                        assert reply.value == f"hello {value}"

                await asyncio.gather(*(caller(w) for w in range(64)))
                assert len(greeter.served) == 256
                assert set(greeter.served.values()) == {1}, "a call was served twice"
            finally:
                await server.stop()

        self._run(conformance, case)

    def test_rpc_server_stream_with_flow_control(self, conformance: Harness) -> None:
        """A server stream arrives whole and in order; the server never runs ahead of the window."""

        async def case(h: Harness) -> None:
            name = _service_name("stream")
            greeter = Greeter()
            server = await self._serve(h, name, greeter)
            client = Client(await h.broker())
            window = 4
            try:
                request = client.new_request(name, "Greeter.Count", {"to": 60})
                received: list[int] = []
                ahead = 0
                async with await client.stream(
                    request, dict, window=window, timeout=h.timeout * 3
                ) as stream:
                    async for item in stream:
                        received.append(item["n"])
                        ahead = max(ahead, greeter.produced - len(received))
                        if len(received) % 10 == 0:
                            await asyncio.sleep(0.05)  # a slow reader now and then
                assert received == list(range(60))
                # One item may be produced while it waits for a credit.
                assert ahead <= window + 1, f"the server ran {ahead} items ahead of the reader"
            finally:
                await server.stop()

        self._run(conformance, case)

    def test_rpc_bidirectional_and_client_streams(self, conformance: Harness) -> None:
        """Messages both ways in order; close_send ends the server's request iterator."""

        async def case(h: Harness) -> None:
            name = _service_name("bidi")
            server = await self._serve(h, name, Greeter())
            client = Client(await h.broker())
            try:
                words = [f"word{n}" for n in range(30)]
                shout = client.new_request(name, "Greeter.Shout", None)
                async with await client.stream(
                    shout, str, window=4, timeout=h.timeout * 3
                ) as stream:
                    replies: list[str] = []
                    for word in words:
                        await stream.send(word)
                        if len(replies) < 20:
                            replies.append(await stream.recv())
                    await stream.close_send()
                    replies.extend([reply async for reply in stream])
                assert replies == [w.upper() for w in words]
                total = client.new_request(name, "Greeter.Total", None)
                async with await client.stream(total, int, timeout=h.timeout * 3) as stream:
                    for n in range(1, 11):
                        await stream.send(n)
                    await stream.close_send()
                    assert [t async for t in stream] == [55]
            finally:
                await server.stop()

        self._run(conformance, case)

    def test_rpc_stream_cancellation_from_either_side(self, conformance: Harness) -> None:
        """A client closing early stops the handler; a handler failing ends the client's stream."""

        async def case(h: Harness) -> None:
            name = _service_name("cancel")
            greeter = Greeter()
            server = await self._serve(h, name, greeter)
            client = Client(await h.broker())
            try:
                endless = client.new_request(name, "Greeter.Count", {"to": 10**9})
                stream = await client.stream(endless, dict, window=2)
                assert [(await stream.recv())["n"] for _ in range(3)] == [0, 1, 2]
                await stream.close()
                await asyncio.wait_for(greeter.closed.wait(), h.timeout)
                failing = client.new_request(name, "Greeter.FailAfter", {"items": 3})
                async with await client.stream(failing, dict) as failing_stream:
                    got = [(await failing_stream.recv())["n"] for _ in range(3)]
                    with pytest.raises(RpcError) as failed:
                        await failing_stream.recv()
                assert got == [0, 1, 2]
                assert failed.value.code == 500
                assert "broke mid-stream" in failed.value.detail
                with pytest.raises(RpcError) as unknown:
                    await client.stream(client.new_request(name, "Greeter.Missing", {}), dict)
                assert unknown.value.code == 404
            finally:
                await server.stop()

        self._run(conformance, case)
