"""One module per transport, each offering the same small interface per variant.

A *variant* is one way of moving messages over a transport: ``raw`` (the
client library by hand, the baseline), ``microbroker`` (the typed Event API
with protobuf bodies, what a microbroker user writes) and ``faststream`` (the
peer a user would pick instead). Every variant of every transport answers the
same calls, so that :mod:`run` measures every shape the same way:

    variant = factory()              # a fresh variant per case
    await variant.open()
    await variant.subscribe(topic, queue, hit)   # as many times as the shape needs
    await variant.ready()
    publish = variant.publisher(topic, body)     # ``await publish()`` sends one
    ...
    await variant.close()

``body`` is a serialized ``google.protobuf.BytesValue``: the raw and
FastStream variants send those bytes, the microbroker variant publishes the
decoded message through ``Event.publish`` and its subscriber receives it typed.
FastStream handlers decode the protobuf themselves (what a user of it writes);
raw handlers only count, so the raw baseline is the strictest one.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

Hit = Callable[[], None]
Publish = Callable[[], Awaitable[None]]


class Variant(abc.ABC):
    """One way of publishing and subscribing on one transport."""

    #: ``raw``, ``microbroker`` or ``faststream``.
    kind: str = ""
    #: The separator of topic levels on this transport.
    separator: str = "."

    def queue_topic(self, topic: str) -> str:
        return topic

    @abc.abstractmethod
    async def open(self) -> None: ...

    @abc.abstractmethod
    async def subscribe(self, topic: str, queue: str | None, hit: Hit) -> None: ...

    async def ready(self) -> None:  # noqa: B027 (an optional hook)
        """Called after the last subscribe, before the first publish."""

    @abc.abstractmethod
    def publisher(self, topic: str, body: bytes) -> Publish: ...

    @abc.abstractmethod
    async def close(self) -> None: ...


@dataclass
class Transport:
    """A transport with its server (if any) and its variants."""

    name: str
    #: kind -> factory of a fresh variant, given what ``server`` yielded.
    variants: dict[str, Callable[[Any], Variant]]
    #: a context manager starting the server for this transport, yielding its address.
    server: Callable[[], AbstractContextManager[Any]]
    notes: list[str] = field(default_factory=list)
    #: the shapes measured (``None``: all); joining consumer groups is slow on some transports.
    shapes: tuple[str, ...] | None = None
    #: whether to measure cost against subscribers and topics.
    scaling: bool = True


def no_server() -> AbstractContextManager[None]:
    from contextlib import contextmanager

    @contextmanager
    def nothing() -> Iterator[None]:
        yield None

    return nothing()
