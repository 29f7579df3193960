"""The greeter's messages and its handler, shared by the service and the client.

Messages are dataclasses (JSON on the wire) and protobuf well-known types
(``google.protobuf.wrappers_pb2``), so that no protoc step is needed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from google.protobuf import wrappers_pb2

import microbroker

SERVICE = "greeter"


@dataclass
class HelloRequest:
    name: str


@dataclass
class HelloReply:
    message: str


class Greeter:
    """Endpoints ``Greeter.Hello``, ``Greeter.Countdown`` and ``Greeter.Chat``."""

    async def Hello(self, request: HelloRequest, ctx: microbroker.Context) -> HelloReply:
        """A unary call; ``ctx.metadata`` holds what the caller sent as metadata."""
        if not request.name:
            # The caller sees this code and detail as a microbroker.RpcError.
            raise microbroker.RpcError(SERVICE, 400, "a name is required")
        language = ctx.metadata.get("language", "en")
        greeting = {"en": "Hello", "fr": "Bonjour"}.get(language, "Hello")
        return HelloReply(f"{greeting}, {request.name}!")

    async def Countdown(
        self, start: wrappers_pb2.Int32Value
    ) -> AsyncIterator[wrappers_pb2.Int32Value]:
        """Server streaming: protobuf messages, one per step."""
        for n in range(start.value, -1, -1):
            yield wrappers_pb2.Int32Value(value=n)
            await asyncio.sleep(0.05)

    async def Chat(self, lines: AsyncIterator[str]) -> AsyncIterator[str]:
        """Bidirectional: answers each line as it comes."""
        async for line in lines:
            yield f"you said {line!r}"
