"""Instructions per JetStream message, publish and delivery in one process (valgrind's callgrind).

On a shared machine rates swing with the load; the instructions the benchmark's
process executes do not. Each case is run under callgrind at two message
counts and the difference is divided by the messages between them, so that
start-up (the server, connecting, subscribing) cancels out. The cases are those
of ``benchmarks/run.py``'s ``nats-jetstream`` rows, one subscriber:

- ``raw``: nats-py's ``js.publish`` (each awaits its ack) and a push subscriber
  that counts (nats-py acks after the callback);
- ``raw-async``: ``js.publish_async`` (acks awaited apart, 4000 at most);
- ``microbroker``: ``service.event(topic).publish(proto)`` to a typed subscriber;
- ``microbroker-async``: the same with ``publish_acks="async"``.

    python benchmarks/jetstream_instructions.py [--cases raw,microbroker] [--low 2000 --high 6000]
    python benchmarks/jetstream_instructions.py --run CASE N   # one run (what callgrind runs)

nats-server runs as a child process, which callgrind does not follow.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

CASES = ("raw", "raw-async", "microbroker", "microbroker-async")


def body_of(size: int) -> bytes:
    """A serialized ``BytesValue`` of ``size`` bytes, as ``run.py`` publishes."""
    from google.protobuf.wrappers_pb2 import BytesValue

    return BytesValue(value=os.urandom(size - 3)).SerializeToString()


async def one_run(case: str, messages: int, size: int) -> None:
    from harness import Counter
    from support.nats_server import NatsServer
    from transports import Variant
    from transports.nats import RawNats, RawNatsAsync, transport

    with NatsServer(jetstream=True) as server:
        variant: Variant
        if case == "raw":
            variant = RawNats(server.url, jetstream=True)
        elif case == "raw-async":
            variant = RawNatsAsync(server.url)
        else:
            variant = transport(jetstream=True).variants[case](server)
        topic = f"bench.{uuid.uuid4().hex[:8]}"
        state = {"c": Counter(1 << 62)}
        await variant.open()
        await variant.subscribe(topic, None, lambda: state["c"].hit())
        await variant.ready()
        publish = variant.publisher(topic, body_of(size))

        async def once(n: int) -> None:
            counter = state["c"] = Counter(n)
            for _ in range(n):
                await publish()
            await counter.wait(600)

        await once(200)  # warm up
        await once(messages)
        await variant.close()


def instructions(case: str, messages: int, size: int) -> int:
    """Instructions callgrind counts for one run of ``case`` with ``messages``."""
    with tempfile.TemporaryDirectory(prefix="jsi-") as tmp:
        out = Path(tmp) / "callgrind.out"
        subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                sys.executable,
                __file__,
                "--run",
                case,
                str(messages),
                "--size",
                str(size),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for line in out.read_text().splitlines():
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise RuntimeError("callgrind wrote no total")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--low", type=int, default=2000)
    parser.add_argument("--high", type=int, default=6000)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--run", nargs=2, metavar=("CASE", "N"))
    args = parser.parse_args()
    if args.run:
        asyncio.run(one_run(args.run[0], int(args.run[1]), args.size))
        return
    for case in args.cases.split(","):
        low = instructions(case, args.low, args.size)
        high = instructions(case, args.high, args.size)
        per = (high - low) / (args.high - args.low)
        print(f"{case:18} {per / 1000:8.1f}k instructions per message", flush=True)


if __name__ == "__main__":
    main()
