"""RPC over NATS: microbroker's Client.call against raw nats-py request/reply, in one run.

Server: an ``Echo.Echo`` handler served with ``service.handle`` (protobuf
BytesValue in and out); the raw peer answers ``msg.respond(msg.data)`` after
parsing the same protobuf. Measured: the p50/p99 of sequential calls, and
calls per second with 64 concurrent callers. Caller and server are in the
same process, on separate connections.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import nats
from google.protobuf.wrappers_pb2 import BytesValue

import microbroker
from microbroker_nats import NatsBroker

SERVICE = "bench-echo"


class Echo:
    async def Echo(self, request: BytesValue) -> BytesValue:
        return request


async def _latency(call: Callable[[], Awaitable[Any]], n: int) -> dict[str, float]:
    for _ in range(min(200, n)):
        await call()
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - start) * 1e6)
    samples.sort()
    return {"p50": samples[n // 2], "p99": samples[int(n * 0.99)], "samples": float(n)}


async def _concurrent(call: Callable[[], Awaitable[Any]], n: int, callers: int = 64) -> float:
    left = iter(range(n))

    async def caller() -> None:
        for _ in left:
            await call()

    start = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    return n / (time.perf_counter() - start)


#: One way of calling Echo.Echo, and what closes it.
Peer = tuple[Callable[[], Awaitable[Any]], Callable[[], Awaitable[None]]]

REQUEST = BytesValue(value=b"x" * 100)


async def raw_peer(url: str) -> Peer:
    """Raw nats-py request/reply: a responder that parses the protobuf and answers it."""
    nc_server, nc_client = await nats.connect(url), await nats.connect(url)
    subject = f"bench.rpc.{uuid.uuid4().hex[:8]}"
    body = REQUEST.SerializeToString()

    async def respond(msg: Any) -> None:
        await msg.respond(BytesValue.FromString(msg.data).SerializeToString())

    await nc_server.subscribe(subject, cb=respond)
    await nc_server.flush()

    async def call() -> Any:
        reply = await nc_client.request(subject, body, timeout=5)
        return BytesValue.FromString(reply.data)

    async def close() -> None:
        await nc_client.close()
        await nc_server.close()

    return call, close


async def microbroker_peer(url: str) -> Peer:
    """``Client.call`` to an ``Echo`` handler served with ``service.handle``."""
    server_service = microbroker.Service(SERVICE, broker=NatsBroker(url))
    server_service.handle(Echo())
    await server_service.start()
    client_broker = NatsBroker(url)
    await client_broker.connect()
    client = microbroker.Client(client_broker)

    async def call() -> Any:
        return await client.call(SERVICE, "Echo.Echo", REQUEST, BytesValue, timeout=5)

    async def close() -> None:
        await client_broker.disconnect()
        await server_service.stop()

    return call, close


async def run(quick: bool, repeat: int, log: Callable[[str], None]) -> list[Any]:
    """Both peers open at once; each round measures raw and microbroker in turn
    (the order rotated every round), and the ratios are taken within each round.

    A round takes seconds, not minutes: a full run makes at least five, so that
    the median is not one burst of other work on a shared machine.
    """
    from run import Row, rows_of, spread
    from support.nats_server import NatsServer

    n_lat, n_conc = (1_000, 3_000) if quick else (5_000, 20_000)
    rounds = max(1, repeat) if quick else max(5, repeat)
    rate: dict[str, list[float]] = {"raw": [], "microbroker": []}
    latencies: dict[str, list[dict[str, float]]] = {"raw": [], "microbroker": []}
    with NatsServer() as server:
        raw_call, close_raw = await raw_peer(server.url)
        micro_call, close_micro = await microbroker_peer(server.url)
        calls = {"raw": raw_call, "microbroker": micro_call}
        try:
            for i in range(rounds):
                order = list(calls) if i % 2 == 0 else list(reversed(calls))
                for name in order:
                    lat = await _latency(calls[name], n_lat)
                    latencies[name].append(lat)
                    rate[name].append(await _concurrent(calls[name], n_conc))
                    log(
                        f"  rpc round {i + 1} {name:12} p50 {lat['p50']:.0f} us "
                        f"p99 {lat['p99']:.0f} us, {rate[name][-1]:,.0f} calls/s with 64 callers"
                    )
        finally:
            await close_micro()
            await close_raw()
    # p50: lower is better, so each variant's row carries its best (lowest) round.
    p50 = {name: [lat["p50"] for lat in found] for name, found in latencies.items()}
    rows: list[Row] = []
    for name in calls:
        best = min(latencies[name], key=lambda d: d["p50"])
        extra: dict[str, Any] = {**best, "rounds": p50[name]}
        if name != "raw":
            extra["vs_raw"] = spread(p50, name, "raw")
        rows.append(Row("rpc", "nats", name, "call p50 (us)", "100B", best["p50"], "us", extra))
    rows += rows_of("rpc", "nats", "calls/s, 64 callers", "100B", rate)
    return rows
