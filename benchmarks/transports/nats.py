"""NATS core and JetStream: raw nats-py, microbroker's NatsBroker, FastStream's NatsBroker.

The server is :class:`tests.support.nats_server.NatsServer`, as in the tests.
"""

from __future__ import annotations

import uuid
from contextlib import AbstractContextManager
from typing import Any

import nats

from microbroker_nats import NatsBroker

from . import Hit, Publish, Transport, Variant
from .common import FastStreamVariant, MicrobrokerVariant


class RawNats(Variant):
    """``nc.publish`` and a counting callback, on two connections."""

    kind = "raw"

    def __init__(self, url: str, jetstream: bool) -> None:
        self.url = url
        self.jetstream = jetstream

    async def open(self) -> None:
        self.pub = await nats.connect(self.url)
        self.sub = await nats.connect(self.url)
        self.streams: set[str] = set()

    async def _stream(self, topic: str) -> None:
        if topic in self.streams:
            return
        name = "bench-raw-" + topic.replace(".", "-")
        await self.pub.jetstream().add_stream(name=name, subjects=[topic])
        self.streams.add(topic)

    async def subscribe(self, topic: str, queue: str | None, hit: Hit) -> None:
        async def on_msg(msg: Any) -> None:
            hit()

        if self.jetstream:
            await self._stream(topic)
            await self.sub.jetstream().subscribe(
                topic,
                queue=queue,
                cb=on_msg,
                pending_msgs_limit=-1,
                pending_bytes_limit=-1,
            )
        else:
            await self.sub.subscribe(
                topic, queue=queue or "", cb=on_msg, pending_msgs_limit=-1, pending_bytes_limit=-1
            )

    async def ready(self) -> None:
        await self.sub.flush()

    def publisher(self, topic: str, body: bytes) -> Publish:
        if self.jetstream:
            js_publish = self.pub.jetstream().publish

            async def send_js() -> None:
                await js_publish(topic, body)

            return send_js
        publish = self.pub.publish

        async def send() -> None:
            await publish(topic, body)

        return send

    async def close(self) -> None:
        await self.pub.close()
        await self.sub.close()


class RawNatsAsync(RawNats):
    """JetStream's ``js.publish_async`` (acks awaited apart, at most 4000 pending)."""

    kind = "raw-async"

    def __init__(self, url: str) -> None:
        super().__init__(url, jetstream=True)

    async def open(self) -> None:
        await super().open()
        # One context for every publisher: its ack inbox and its bound of pending acks.
        self.js = self.pub.jetstream()

    def publisher(self, topic: str, body: bytes) -> Publish:
        publish_async = self.js.publish_async

        async def send() -> None:
            await publish_async(topic, body)

        return send

    async def close(self) -> None:
        await self.js.publish_async_completed()
        await super().close()


def _server(jetstream: bool) -> AbstractContextManager[Any]:
    from support.nats_server import NatsServer

    return NatsServer(jetstream=jetstream, max_payload=8 * 1024 * 1024)


def _faststream(url: str, jetstream: bool) -> FastStreamVariant:
    from faststream.nats import JStream
    from faststream.nats import NatsBroker as FsNatsBroker

    def make() -> Any:
        return FsNatsBroker(url, logger=None)

    if not jetstream:
        return FastStreamVariant(make)
    tag = uuid.uuid4().hex[:8]

    def stream(topic: str) -> Any:
        return JStream(name=f"bench-fs-{tag}-" + topic.replace(".", "-"), subjects=[topic])

    def sub_options(topic: str, queue: str | None) -> dict[str, Any]:
        options: dict[str, Any] = {"stream": stream(topic)}
        if queue:
            options["queue"] = queue
        return options

    return FastStreamVariant(
        make, subscriber_options=sub_options, publish_options=lambda t: {"stream": stream(t).name}
    )


def transport(jetstream: bool = False) -> Transport:
    def address(server: Any) -> str:
        return str(server.url)

    def micro(server: Any, acks: str = "sync") -> Variant:
        url = address(server)
        # The option only when it is not the default: the same rows run on older code.
        options = {"publish_acks": acks} if acks != "sync" else {}
        return MicrobrokerVariant(
            lambda: NatsBroker(url, jetstream=jetstream, max_ack_pending=20_000, **options)
        )

    variants: dict[str, Any] = {
        "raw": lambda server: RawNats(address(server), jetstream),
        "microbroker": micro,
        "faststream": lambda server: _faststream(address(server), jetstream),
    }
    if jetstream:
        # Many publishes in flight: raw js.publish_async against publish_acks="async".
        variants["raw-async"] = lambda server: RawNatsAsync(address(server))
        variants["microbroker-async"] = lambda server: micro(server, "async")
    return Transport(
        "nats-jetstream" if jetstream else "nats",
        variants,
        lambda: _server(jetstream),
    )
