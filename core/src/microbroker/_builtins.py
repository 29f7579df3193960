"""The core's own plugin: its brokers, codecs, client and server, registered like any other."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import codecs
from ._markers import hookimpl


@hookimpl
def register_brokers(register: Callable[[str, Callable[..., Any]], None]) -> None:
    from .brokers.http import HttpBroker
    from .brokers.memory import MemoryBroker

    register("memory", MemoryBroker)
    register("http", HttpBroker)


@hookimpl
def register_registries(register: Callable[[str, Callable[..., Any]], None]) -> None:
    from .registries.local import LocalRegistry
    from .registries.memory import MemoryRegistry

    register("local", LocalRegistry)
    register("memory", MemoryRegistry)


@hookimpl
def register_codecs(register: Callable[[str, codecs.Codec], None]) -> None:
    protobuf = codecs.ProtobufCodec()
    json = codecs.JsonCodec()
    register(codecs.PROTOBUF, protobuf)
    register("application/x-protobuf", protobuf)
    register("application/proto", protobuf)
    # go-micro's gRPC client publishes events with these (the body unframed, as its codecs
    # marshal it): aliases, as in go-micro's own codec table.
    register("application/grpc", protobuf)
    register("application/grpc+proto", protobuf)
    register("application/grpc+json", json)
    register(codecs.JSON, json)
    register(codecs.OCTET_STREAM, codecs.RawCodec())
    register(codecs.TEXT, codecs.TextCodec())


@hookimpl
def register_clients(register: Callable[[str, Callable[..., Any]], None]) -> None:
    from ._client import Client

    register("default", Client)


@hookimpl
def register_servers(register: Callable[[str, Callable[..., Any]], None]) -> None:
    from ._server import Server

    register("default", Server)
