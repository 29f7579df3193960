"""A broker with native request/reply (the RequestReply protocol) is used for unary calls."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest
from _helpers import new_address

import microbroker
from microbroker import Client, Delivery, Message, RpcError, Service, Subscriber
from microbroker._rpc import RequestReply, Responder
from microbroker.brokers.memory import MemoryBroker

_ids = itertools.count()


class _NativeDelivery(Delivery):
    def __init__(self, inner: Delivery, broker: NativeMemoryBroker) -> None:
        super().__init__(inner.topic, inner.message, queue=inner.queue, attempt=inner.attempt)
        self.reply_to = inner.message.header("X-Native-Reply")
        self._broker = broker

    async def respond(self, message: Message) -> None:
        assert self.reply_to is not None
        await self._broker.publish(self.reply_to, message)


class NativeMemoryBroker(MemoryBroker):
    """The memory broker plus request/serve, as a transport with request/reply offers them."""

    def __init__(self, address: str) -> None:
        super().__init__(address)
        self.requests = 0
        self.served = 0

    async def request(self, topic: str, message: Message, *, timeout: float) -> Message:
        self.requests += 1
        reply_topic = f"native.reply.{next(_ids)}"
        answer: asyncio.Future[Message] = asyncio.get_running_loop().create_future()

        async def on_reply(delivery: Delivery) -> None:
            if not answer.done():
                answer.set_result(delivery.message)

        sub = await self.subscribe(reply_topic, on_reply)
        try:
            headers = {**message.headers, "X-Native-Reply": reply_topic}
            await self.publish(topic, Message(message.body, headers))
            async with asyncio.timeout(timeout):
                return await answer
        finally:
            await sub.unsubscribe()

    async def serve(
        self, topic: str, responder: Responder, *, queue: str | None = None
    ) -> Subscriber:
        async def handler(delivery: Delivery) -> None:
            self.served += 1
            native = _NativeDelivery(delivery, self)
            answer = await responder(native)
            if answer is not None and native.reply_to:
                await native.respond(answer)

        return await self.subscribe(topic, handler, queue=queue)


class Calc:
    async def Add(self, request: dict[str, int]) -> int:
        return request["a"] + request["b"]

    async def Range(self, request: int) -> Any:
        return list(range(request))


@pytest.fixture
async def native() -> Any:
    async with NativeMemoryBroker(new_address("native")) as broker:
        yield broker


def test_the_protocol_is_detected_on_the_broker() -> None:
    assert isinstance(NativeMemoryBroker("x"), RequestReply)
    assert not isinstance(microbroker.get_broker("memory", address="x"), RequestReply)


async def test_unary_calls_use_native_request_reply(native: NativeMemoryBroker) -> None:
    service = Service("calc", broker=native)
    service.handle(Calc())
    client = Client(native)
    async with service:
        assert await client.call("calc", "Calc.Add", {"a": 2, "b": 3}, int) == 5
        with pytest.raises(RpcError) as unknown:
            await client.call("calc", "Calc.Sub", {"a": 2, "b": 3}, int)
        assert unknown.value.code == 404
        # Streams do not have a native path: they go through the inboxes.
        async with await client.stream(client.new_request("calc", "Calc.Range", 3), list) as s:
            assert [r async for r in s] == [[0, 1, 2]]
    assert native.requests == 2
    assert native.served == 3, "the server takes requests through serve()"


async def test_a_lookup_error_from_the_transport_is_a_503() -> None:
    class NoOne(NativeMemoryBroker):
        async def request(self, topic: str, message: Message, *, timeout: float) -> Message:
            raise LookupError("nobody serves it")

    async with NoOne(new_address("native")) as broker:
        with pytest.raises(RpcError) as missing:
            await Client(broker).call("calc", "Calc.Add", {}, int)
    assert missing.value.code == 503
