"""http broker throughput between two processes, against a naive baseline in the same run.

    python benchmarks/http_throughput.py [--messages 20000] [--repeat 3]

A subscriber runs in a child process; this process publishes and the clock
stops when the child has received every message. Cases:

- ``naive``: one aiohttp POST per message, awaited, with go-micro's JSON
  envelope, to a plain aiohttp server that decodes it (what go-micro's http
  broker does per message). The reference.
- ``naive-64``: the same with 64 POSTs in flight at once, for honesty: the
  best a caller can get from per-message POSTs without batching.
- ``http``: the http broker, ``publish()`` awaited per message (it returns
  once the message is in the bounded retention buffer; the subscriber acks
  every message).
- ``http-confirm``: ``publish(confirm=True)``, which waits for each ack (fewer
  messages: it is bound by one round trip per message).

Results go to ``benchmarks/results/http_throughput.json`` and a markdown table
is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
from aiohttp import web
from harness import Result, measure, ratio_table, save

import microbroker
from microbroker.registries.local import LocalRegistry

TOPIC = "bench"
SIZES = (128, 16 * 1024)


# The child process: a subscriber that says "done" when it has what it expects. ------


async def child(kind: str, registry_dir: str) -> None:
    expected = 0
    count = 0
    loop = asyncio.get_running_loop()

    def hit() -> None:
        nonlocal count
        count += 1
        if count == expected:
            print("done", flush=True)

    async def on_delivery(delivery: microbroker.Delivery) -> None:
        hit()

    async def on_post(request: web.Request) -> web.Response:
        doc = json.loads(await request.read())
        base64.b64decode(doc["Body"])
        if doc["Header"].get("Micro-Topic") != TOPIC:
            return web.Response(status=400)
        hit()
        return web.Response()

    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    runner: web.AppRunner | None = None
    broker: microbroker.Broker | None = None
    if kind == "http":
        broker = microbroker.get_broker("http", registry=LocalRegistry(registry_dir))
        await broker.connect()
        await broker.subscribe(TOPIC, on_delivery)
        print("ready", flush=True)
    else:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/", on_post)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        print(f"ready {runner.addresses[0][1]}", flush=True)
    while line := (await reader.readline()).decode().strip():
        if line.startswith("expect "):
            expected, count = int(line.split()[1]), 0
            print("ok", flush=True)
        elif line == "quit":
            break
    if broker is not None:
        await broker.disconnect()
    if runner is not None:
        await runner.cleanup()


# The measuring process. -------------------------------------------------------------


class Child:
    def __init__(self, proc: asyncio.subprocess.Process, ready: str) -> None:
        self.proc = proc
        self.ready = ready

    @classmethod
    async def start(cls, kind: str, registry_dir: str) -> Child:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--child",
            kind,
            registry_dir,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        return cls(proc, await cls._line(proc))

    @staticmethod
    async def _line(proc: asyncio.subprocess.Process) -> str:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        if not line:
            raise RuntimeError("the benchmark's child process exited")
        return line.decode().strip()

    async def expect(self, n: int) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"expect {n}\n".encode())
        await self.proc.stdin.drain()
        assert await self._line(self.proc) == "ok"

    async def done(self) -> None:
        assert await self._line(self.proc) == "done"

    async def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"quit\n")
        await self.proc.stdin.drain()
        await asyncio.wait_for(self.proc.wait(), 30)


def envelope(body: bytes, i: int) -> bytes:
    return json.dumps(
        {
            "Header": {"Micro-Topic": TOPIC, "Micro-Id": str(i)},
            "Body": base64.b64encode(body).decode(),
        }
    ).encode()


async def naive_case(
    registry_dir: str, size: int, messages: int, repeat: int, concurrency: int
) -> Result:
    child_proc = await Child.start("naive", registry_dir)
    url = f"http://127.0.0.1:{child_proc.ready.split()[1]}/?id=bench-node"
    body = b"x" * size
    async with aiohttp.ClientSession() as session:

        async def post(i: int) -> None:
            async with session.post(
                url, data=envelope(body, i), headers={"Content-Type": "application/json"}
            ) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"baseline POST answered {response.status}")

        async def run_once(n: int) -> None:
            await child_proc.expect(n)
            if concurrency == 1:
                for i in range(n):
                    await post(i)
            else:
                queue = iter(range(n))

                async def worker() -> None:
                    for i in queue:
                        await post(i)

                await asyncio.gather(*(worker() for _ in range(concurrency)))
            await child_proc.done()

        name = "naive" if concurrency == 1 else f"naive-{concurrency}"
        result = await measure(name, f"1->1 {size}B", messages, run_once, repeat=repeat)
    await child_proc.stop()
    return result


async def http_case(
    registry_dir: str, size: int, messages: int, repeat: int, confirm: bool
) -> Result:
    child_proc = await Child.start("http", registry_dir)
    body = b"x" * size
    broker = microbroker.get_broker("http", registry=LocalRegistry(registry_dir))
    async with broker:

        async def run_once(n: int) -> None:
            await child_proc.expect(n)
            publish: Callable[..., Awaitable[None]] = broker.publish
            for i in range(n):
                await publish(
                    TOPIC, microbroker.Message(body, {"Micro-Id": str(i)}), confirm=confirm
                )
            await child_proc.done()

        name = "http-confirm" if confirm else "http"
        result = await measure(name, f"1->1 {size}B", messages, run_once, repeat=repeat)
    await child_proc.stop()
    return result


async def main(messages: int, repeat: int) -> None:
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="microbroker-bench-") as tmp:
        registry_dir = str(Path(tmp) / "registry")
        for size in SIZES:
            n = messages if size <= 1024 else messages // 4
            results.append(await naive_case(registry_dir, size, max(n // 10, 200), repeat, 1))
            results.append(await naive_case(registry_dir, size, max(n // 2, 200), repeat, 64))
            results.append(await http_case(registry_dir, size, n, repeat, False))
            results.append(await http_case(registry_dir, size, max(n // 10, 200), repeat, True))
            for r in results[-4:]:
                print(f"{r.name:14} {r.shape:14} {r.rate:12,.0f} msg/s", flush=True)
    print()
    print(ratio_table(results, "naive", "http broker between two processes"))
    print(f"\nsaved {save('http_throughput', results)}")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        asyncio.run(child(sys.argv[2], sys.argv[3]))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.messages, args.repeat))
