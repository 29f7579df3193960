"""Redis Streams: raw redis-py, microbroker's RedisBroker, FastStream's RedisBroker.

The same topology and guarantees for all three, the microbroker defaults
(``mode="streams"``): one stream per topic, XADD one publish at a time (each
awaits its reply), a consumer group per queue group and one per broadcast
subscriber (created at ``$``), each subscriber a consumer of its own reading
up to ``BATCH`` entries per XREADGROUP, entries acknowledged (XACK) after the
handler. How each acknowledges is its own: raw sends one XACK per read,
microbroker batches XACKs in a task of the subscription, FastStream awaits one
XACK per message (its default ``AckPolicy.REJECT_ON_ERROR``).

The server is :class:`tests.support.redis_server.RedisServer`, as in the
tests, with RDB snapshots off (``save ""``) so that no fork of the server lands
in one variant's measurement; each variant deletes the streams it used when it
closes, so one case's entries do not weigh on the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from contextlib import AbstractContextManager
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions
from microbroker_redis import RedisBroker

from . import Hit, Publish, Transport, Variant
from .common import FastStreamVariant, MicrobrokerVariant

#: Entries one XREADGROUP asks for (microbroker's default ``batch``).
BATCH = 256
#: Milliseconds one XREADGROUP blocks for (microbroker's default ``block``, 2 s).
BLOCK_MS = 2000
CONTENT_TYPE = "application/protobuf"


async def _delete(url: str, keys: set[str]) -> None:
    """Delete the streams of a case (and so their groups)."""
    if not keys:
        return
    client = aioredis.from_url(url)
    try:
        await client.delete(*keys)
    finally:
        await client.aclose()


class RawRedis(Variant):
    """``XADD`` and, per subscriber, an XREADGROUP loop that counts and XACKs what it read."""

    kind = "raw"

    def __init__(self, url: str) -> None:
        self.url = url

    async def open(self) -> None:
        self.pub = aioredis.from_url(self.url)
        self.sub = aioredis.from_url(self.url)
        self.readers: list[asyncio.Task[None]] = []
        self.keys: set[str] = set()
        self.running = True

    async def subscribe(self, topic: str, queue: str | None, hit: Hit) -> None:
        group = queue or f"bench-raw-{uuid.uuid4().hex[:12]}"
        try:
            await self.sub.xgroup_create(topic, group, "$", mkstream=True)
        except redis.exceptions.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self.keys.add(topic)
        consumer = uuid.uuid4().hex
        self.readers.append(asyncio.create_task(self._read(topic, group, consumer, hit)))

    async def _read(self, key: str, group: str, consumer: str, hit: Hit) -> None:
        xreadgroup, xack = self.sub.xreadgroup, self.sub.xack
        streams = {key: ">"}
        while self.running:
            response = await xreadgroup(group, consumer, streams, count=BATCH, block=BLOCK_MS)
            for _key, entries in response or ():
                ids = []
                for entry_id, _fields in entries:
                    hit()
                    ids.append(entry_id)
                await xack(key, group, *ids)

    def publisher(self, topic: str, body: bytes) -> Publish:
        xadd = self.pub.xadd

        async def send() -> None:
            # A message id and the content type, as the raw rabbitmq variant sends them
            # (an Event carries these two and Micro-Topic).
            fields = {":body": body, "Content-Type": CONTENT_TYPE, "Micro-ID": uuid.uuid4().hex}
            await xadd(topic, fields)  # type: ignore[arg-type]

        return send

    async def close(self) -> None:
        # A cancellation can be lost inside redis-py (seen with redis 8.1: the reader went
        # on reading): ask again until the task ends; ``running`` ends it after its read.
        self.running = False
        for task in self.readers:
            while not task.done():
                task.cancel()
                await asyncio.wait([task], timeout=0.1)
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.pub.aclose()
        await self.sub.aclose()
        await _delete(self.url, self.keys)


class RedisMicrobroker(MicrobrokerVariant):
    """The typed Event API on ``RedisBroker`` (Streams), deleting its streams when closed."""

    def __init__(self, url: str) -> None:
        super().__init__(lambda: RedisBroker(url))
        self.url = url
        self.keys: set[str] = set()

    async def subscribe(self, topic: str, queue: str | None, hit: Hit) -> None:
        self.keys.add(topic)
        await super().subscribe(topic, queue, hit)

    async def close(self) -> None:
        await super().close()
        await _delete(self.url, self.keys)


def _faststream(url: str) -> FastStreamVariant:
    from faststream.redis import RedisBroker as FsRedisBroker
    from faststream.redis import StreamSub

    def make() -> Any:
        return FsRedisBroker(url, logger=None)

    class FastStreamRedis(FastStreamVariant):
        keys: set[str]

        async def open(self) -> None:
            self.keys = set()
            await super().open()

        async def subscribe(self, topic: str, queue: str | None, hit: Hit) -> None:
            from google.protobuf.wrappers_pb2 import BytesValue

            async def on_message(body: bytes) -> None:
                BytesValue.FromString(body)
                hit()

            self.keys.add(topic)
            stream = StreamSub(
                topic,
                group=queue or f"bench-fs-{uuid.uuid4().hex[:12]}",
                consumer=uuid.uuid4().hex,
                max_records=BATCH,
            )
            self.subs[-1].subscriber(stream=stream)(on_message)

        def publisher(self, topic: str, body: bytes) -> Publish:
            publish = self.pub.publish

            async def send() -> None:
                await publish(body, stream=topic)

            return send

        async def close(self) -> None:
            await super().close()
            await _delete(url, self.keys)

    return FastStreamRedis(make)


def _server() -> AbstractContextManager[Any]:
    from support.redis_server import RedisServer

    class BenchRedis(RedisServer):
        def _write_config(self) -> None:
            super()._write_config()
            with (self.workdir / "redis.conf").open("a") as config:
                config.write('save ""\n')

    return BenchRedis(name="bench")


def transport() -> Transport:
    def address(server: Any) -> str:
        return str(server.url)

    return Transport(
        "redis",
        {
            "raw": lambda server: RawRedis(address(server)),
            "microbroker": lambda server: RedisMicrobroker(address(server)),
            "faststream": lambda server: _faststream(address(server)),
        },
        _server,
        notes=[
            "redis: Streams for every variant: XADD one publish at a time, a consumer group "
            f"per queue group and one per broadcast subscriber, XREADGROUP of up to {BATCH} "
            "entries, XACK after the handler (raw: one per read; microbroker: batched; "
            "FastStream: one per message); RDB snapshots off"
        ],
    )
