"""One RPC round trip over NATS, raw nats-py against microbroker, for profilers.

The shape of ``benchmarks/transports/rpc.py`` (an ``Echo.Echo`` handler, a
100-byte protobuf ``BytesValue`` in and out, caller and server in one process
on two connections), made to be counted: it starts its own nats-server, warms
up, then makes ``--calls`` calls with ``--callers`` of them in flight and
prints the rate. The work per call is the same in every run but for the
number of calls, so the difference between two runs under callgrind, divided
by the difference of their calls, is the instructions of one call (client and
server together, the nats-server child not counted)::

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        python benchmarks/rpc_profile.py --variant microbroker --calls 1000
    # the same with --calls 3000; (instructions(3000) - instructions(1000)) / 2000

``--cprofile FILE`` writes a cProfile of the measured calls (not the set-up).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "tests")]

import nats  # noqa: E402
from google.protobuf.wrappers_pb2 import BytesValue  # noqa: E402
from support.nats_server import NatsServer  # noqa: E402

import microbroker  # noqa: E402
from microbroker_nats import NatsBroker  # noqa: E402

SERVICE = "bench-echo"


class Echo:
    async def Echo(self, request: BytesValue) -> BytesValue:
        return request


async def _calls(call: Callable[[], Awaitable[Any]], n: int, callers: int) -> float:
    left = iter(range(n))

    async def caller() -> None:
        for _ in left:
            await call()

    start = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    return n / (time.perf_counter() - start)


async def main(args: argparse.Namespace) -> None:
    request = BytesValue(value=b"x" * 100)
    body = request.SerializeToString()
    closers: list[Callable[[], Awaitable[Any]]] = []
    with NatsServer() as server:
        url = server.url
        if args.variant == "raw":
            nc_server, nc_client = await nats.connect(url), await nats.connect(url)
            closers += [nc_client.close, nc_server.close]
            subject = f"bench.rpc.{uuid.uuid4().hex[:8]}"

            async def respond(msg: Any) -> None:
                await msg.respond(BytesValue.FromString(msg.data).SerializeToString())

            await nc_server.subscribe(subject, cb=respond)
            await nc_server.flush()

            async def call() -> Any:
                reply = await nc_client.request(subject, body, timeout=5)
                return BytesValue.FromString(reply.data)

        else:
            service = microbroker.Service(SERVICE, broker=NatsBroker(url))
            service.handle(Echo())
            await service.start()
            client_broker = NatsBroker(url)
            await client_broker.connect()
            closers += [client_broker.disconnect, service.stop]
            client = microbroker.Client(client_broker)

            async def call() -> Any:
                return await client.call(SERVICE, "Echo.Echo", request, BytesValue, timeout=5)

        try:
            await _calls(call, args.warmup, args.callers)
            profile = cProfile.Profile() if args.cprofile else None
            if profile is not None:
                profile.enable()
            rate = await _calls(call, args.calls, args.callers)
            if profile is not None:
                profile.disable()
                profile.dump_stats(args.cprofile)
            print(
                f"{args.variant}: {rate:,.0f} calls/s, {args.callers} callers, {args.calls} calls"
            )
        finally:
            for close in closers:
                await close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--variant", choices=("raw", "microbroker"), default="microbroker")
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--callers", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--cprofile", metavar="FILE")
    asyncio.run(main(parser.parse_args()))
