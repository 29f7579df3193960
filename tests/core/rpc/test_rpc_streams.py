"""Client.stream over the memory broker, and the flow control under it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from _helpers import WAIT

import microbroker
from microbroker import Client, Message, MicrobrokerError, RpcTimeout, Service
from microbroker._rpc_stream import Receiver, Sender


class Ticker:
    def __init__(self) -> None:
        self.stopped = asyncio.Event()

    async def Tick(self, request: dict[str, float]) -> AsyncIterator[int]:
        n = 0
        try:
            while True:
                yield n
                n += 1
                await asyncio.sleep(request["every"])
        finally:
            self.stopped.set()

    async def Double(self, request: int) -> int:
        return request * 2

    async def Echo(self, requests: AsyncIterator[str]) -> AsyncIterator[str]:
        async for request in requests:
            yield request


@pytest.fixture
async def ticker(broker: microbroker.Broker) -> AsyncIterator[Ticker]:
    ticker = Ticker()
    service = Service("ticker", broker=broker)
    service.handle(ticker)
    async with service:
        yield ticker


@pytest.fixture
def client(broker: microbroker.Broker) -> Client:
    return Client(broker)


async def test_a_stream_deadline_stops_both_sides(ticker: Ticker, client: Client) -> None:
    request = client.new_request("ticker", "Ticker.Tick", {"every": 0.01})
    got: list[int] = []
    with pytest.raises(RpcTimeout) as timed_out:  # noqa: PT012 - items arrive, then the timeout
        async with await client.stream(request, int, timeout=0.3) as stream:
            async for n in stream:
                got.append(n)
    assert timed_out.value.code == 408
    assert got[:3] == [0, 1, 2]
    await asyncio.wait_for(ticker.stopped.wait(), WAIT)


async def test_a_unary_endpoint_answers_a_stream_once(ticker: Ticker, client: Client) -> None:
    async with await client.stream(client.new_request("ticker", "Ticker.Double", 21), int) as s:
        assert [n async for n in s] == [42]


async def test_send_after_close_send_is_refused(ticker: Ticker, client: Client) -> None:
    async with await client.stream(client.new_request("ticker", "Ticker.Echo", None), str) as s:
        await s.send("one")
        await s.close_send()
        with pytest.raises(MicrobrokerError, match="close_send"):
            await s.send("two")
        assert [x async for x in s] == ["one"]


async def test_no_instance_to_accept_a_stream_is_a_timeout(client: Client) -> None:
    request = client.new_request("nobody", "Ticker.Tick", {"every": 1})
    with pytest.raises(RpcTimeout, match="accepted"):
        await client.stream(request, int, open_timeout=0.2)


async def test_the_window_must_be_positive(ticker: Ticker, client: Client) -> None:
    with pytest.raises(ValueError, match="window"):
        await client.stream(client.new_request("ticker", "Ticker.Double", 1), int, window=0)


async def test_the_receiver_puts_frames_back_in_order_and_ignores_duplicates() -> None:
    granted: list[int] = []

    async def grant(credits: int) -> None:
        granted.append(credits)

    receiver = Receiver(4, grant)
    frames = {n: Message(str(n).encode()) for n in range(4)}
    for seq in (2, 0, 0, 3, 1, 1):
        receiver.feed(seq, frames[seq])
    receiver.feed(4, None)
    bodies = []
    while (message := await receiver.get(timeout=WAIT)) is not None:
        bodies.append(message.body)
    assert bodies == [b"0", b"1", b"2", b"3"]
    assert sum(granted) == 4, "every consumed message is granted back"


async def test_the_sender_waits_for_credit() -> None:
    sender = Sender(credits=1)
    assert await sender.acquire(timeout=WAIT) == 0
    waiting = asyncio.ensure_future(sender.acquire(timeout=WAIT))
    await asyncio.sleep(0.01)
    assert not waiting.done(), "without credit the sender must wait"
    sender.add(1)
    assert await waiting == 1
    sender.close(MicrobrokerError("gone"))
    with pytest.raises(MicrobrokerError, match="gone"):
        await sender.acquire(timeout=WAIT)


async def test_the_stream_iterates_typed_replies(ticker: Ticker, client: Client) -> None:
    stream: microbroker.Stream[Any] = await client.stream(
        client.new_request("ticker", "Ticker.Tick", {"every": 0}), window=2
    )
    try:
        assert [await stream.recv() for _ in range(5)] == [0, 1, 2, 3, 4]
    finally:
        await stream.close()
    await asyncio.wait_for(ticker.stopped.wait(), WAIT)
