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
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

from support.nats_server import NatsServer  # noqa: E402
from transports.rpc import _concurrent, microbroker_peer, raw_peer  # noqa: E402


async def main(args: argparse.Namespace) -> None:
    with NatsServer() as server:
        peer = raw_peer if args.variant == "raw" else microbroker_peer
        call, close = await peer(server.url)
        try:
            await _concurrent(call, args.warmup, args.callers)
            profile = cProfile.Profile() if args.cprofile else None
            if profile is not None:
                profile.enable()
            rate = await _concurrent(call, args.calls, args.callers)
            if profile is not None:
                profile.disable()
                profile.dump_stats(args.cprofile)
            print(
                f"{args.variant}: {rate:,.0f} calls/s, {args.callers} callers, {args.calls} calls"
            )
        finally:
            await close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--variant", choices=("raw", "microbroker"), default="microbroker")
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--callers", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--cprofile", metavar="FILE")
    asyncio.run(main(parser.parse_args()))
