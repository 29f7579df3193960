"""A host's process for the multi-host tests: an http broker on the mdns registry, run by stdin.

Run inside a host's network namespace with ``MICRO_REGISTRY=mdns`` and
``MICRO_BROKER_ADDRESS=<host address>:0`` and nothing else configured. It
subscribes to ``jobs`` in queue group ``workers`` and to the broadcast topic
``news``, writing each message it accepts to a file (flushed before the
handler returns, so before the ack) in the directory given as argument::

    <dir>/<name>.jobs        one job id a line
    <dir>/<name>.news        one sender name a line
    <dir>/<name>.published   "<id> <ok|error> <start> <end>" a line (monotonic seconds)

It prints JSON lines: ``ready`` (with the registry's interfaces), ``peers``
whenever the number of jobs/news nodes its registry returns changes, and the
outcome of each command. Commands on stdin:

    news                 publish one "news" message naming this host (confirm=True)
    publish N RATE       publish N jobs at RATE a second, at most 32 unconfirmed, confirm=True

For the TLS test, ``MDNS_HOST_TLS_CERT`` and ``MDNS_HOST_TLS_KEY`` (the test's
own variables, not microbroker's) make it serve HTTPS with that certificate.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import sys
import time
from pathlib import Path
from typing import Any

import microbroker

NAME = sys.argv[1]
OUT = Path(sys.argv[2])


def say(kind: str, **fields: Any) -> None:
    print(json.dumps({"event": kind, "host": NAME, "t": time.monotonic(), **fields}), flush=True)


class Host:
    def __init__(self) -> None:
        options = {}
        cert = os.environ.get("MDNS_HOST_TLS_CERT")
        if cert:
            server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            server.load_cert_chain(cert, os.environ["MDNS_HOST_TLS_KEY"])
            options["tls"] = server
        self.broker = microbroker.get_broker(**options)
        self.jobs = open(OUT / f"{NAME}.jobs", "a", buffering=1)  # noqa: SIM115
        self.news = open(OUT / f"{NAME}.news", "a", buffering=1)  # noqa: SIM115
        self.published = open(OUT / f"{NAME}.published", "a", buffering=1)  # noqa: SIM115

    async def on_job(self, delivery: microbroker.Delivery) -> None:
        self.jobs.write(delivery.message.body.decode() + "\n")
        self.jobs.flush()

    async def on_news(self, delivery: microbroker.Delivery) -> None:
        self.news.write(delivery.message.body.decode() + "\n")
        self.news.flush()

    async def watch_peers(self) -> None:
        registry = self.broker.registry  # type: ignore[attr-defined]
        last = None
        while True:
            services = await registry.get_service("micro.http.broker")
            counts = {"jobs": 0, "news": 0}
            for service in services:
                for node in service.nodes:
                    topic = node.metadata.get("topic", "")
                    if topic in counts:
                        counts[topic] += 1
            if counts != last:
                say("peers", **counts)
                last = counts
            await asyncio.sleep(0.05)

    async def publish_news(self) -> None:
        try:
            await self.broker.publish("news", microbroker.Message(NAME.encode()), confirm=True)
        except microbroker.PublishError as exc:
            say("news-failed", error=str(exc))
        else:
            say("news-sent")

    async def publish_jobs(self, count: int, rate: float) -> None:
        window = asyncio.Semaphore(32)
        results = {"ok": 0, "error": 0}

        async def one(index: int) -> None:
            job = f"{NAME}-{index}"
            start = time.monotonic()
            try:
                await self.broker.publish("jobs", microbroker.Message(job.encode()), confirm=True)
            except microbroker.PublishError as exc:
                outcome = "error"
                say("job-failed", job=job, error=str(exc)[:300])
            else:
                outcome = "ok"
            finally:
                window.release()
            results[outcome] += 1
            self.published.write(f"{job} {outcome} {start:.6f} {time.monotonic():.6f}\n")
            done = results["ok"] + results["error"]
            if done % 50 == 0:
                say("progress", **results)

        tasks = []
        began = time.monotonic()
        for index in range(count):
            # Paced, so that the stream is still running while a host goes down.
            delay = began + index / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await window.acquire()
            tasks.append(asyncio.create_task(one(index)))
        await asyncio.gather(*tasks)
        self.published.flush()
        say("published", **results)

    async def run(self) -> None:
        async with self.broker:
            await self.broker.subscribe("jobs", self.on_job, queue="workers")
            await self.broker.subscribe("news", self.on_news)
            registry = self.broker.registry  # type: ignore[attr-defined]
            say(
                "ready",
                address=self.broker.bound_address,  # type: ignore[attr-defined]
                registry=str(registry),
                interfaces=getattr(registry, "interfaces", []),
                environment=sorted(k for k in os.environ if k.startswith("MICRO_")),
            )
            watcher = asyncio.create_task(self.watch_peers())
            loop = asyncio.get_running_loop()
            reader = asyncio.StreamReader()
            await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
            commands: set[asyncio.Task[None]] = set()
            while line := (await reader.readline()).decode().split():
                if line[0] == "news":
                    task = asyncio.create_task(self.publish_news())
                elif line[0] == "publish":
                    task = asyncio.create_task(self.publish_jobs(int(line[1]), float(line[2])))
                elif line[0] == "quit":
                    break
                else:
                    say("unknown-command", line=line)
                    continue
                commands.add(task)
                task.add_done_callback(commands.discard)
            await asyncio.gather(*commands)
            watcher.cancel()
        say("stopped")


if __name__ == "__main__":
    asyncio.run(Host().run())
