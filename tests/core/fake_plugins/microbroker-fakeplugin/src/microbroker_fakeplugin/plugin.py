"""The hook implementations of the fake plugin: one broker and one codec."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import microbroker
from microbroker.brokers.memory import MemoryBroker

CONTENT_TYPE = "application/x-fake"


class FakeBroker(MemoryBroker):
    """The memory broker under another name, as a plugin's broker would be."""

    name = "fake"
    default_address = "fake-default"


class ReversedCodec:
    """UTF-8 text stored reversed: recognisable on the wire, trivial to check."""

    content_type = CONTENT_TYPE

    def encode(self, value: Any) -> bytes:
        if not isinstance(value, str):
            raise microbroker.EncodeError(self.content_type, type(value), None)
        return value[::-1].encode()

    def decode(self, data: bytes, into: Any) -> Any:
        return data.decode()[::-1]


@microbroker.hookimpl
def register_brokers(register: Callable[[str, Callable[..., microbroker.Broker]], None]) -> None:
    register("fake", FakeBroker)


@microbroker.hookimpl
def register_codecs(register: Callable[[str, Any], None]) -> None:
    register(CONTENT_TYPE, ReversedCodec())
