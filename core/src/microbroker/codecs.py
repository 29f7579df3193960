"""Body codecs, chosen by the ``Content-Type`` header.

Built in: ``application/protobuf`` (protobuf messages; also under
``application/x-protobuf`` and ``application/proto``), ``application/json``
(protobuf messages in their JSON mapping, dataclasses, pydantic models, dicts,
lists and scalars), ``application/octet-stream`` (raw bytes) and
``text/plain`` (str). A plugin adds more through the ``register_codecs`` hook.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any, Protocol, runtime_checkable

from google.protobuf import json_format
from google.protobuf.message import Message as ProtoMessage

from ._errors import EncodeError, PluginNotFound
from ._headers import normalize_content_type
from ._plugins import registry

__all__ = [
    "JSON",
    "OCTET_STREAM",
    "PROTOBUF",
    "TEXT",
    "Codec",
    "JsonCodec",
    "ProtobufCodec",
    "RawCodec",
    "TextCodec",
    "content_type_for",
    "content_type_for_type",
    "get_codec",
    "is_protobuf_type",
    "normalize_content_type",
]

PROTOBUF = "application/protobuf"
JSON = "application/json"
OCTET_STREAM = "application/octet-stream"
TEXT = "text/plain"


@runtime_checkable
class Codec(Protocol):
    """Turns values into bodies and bodies into values of a requested type."""

    content_type: str
    """The canonical content type written in the ``Content-Type`` header."""

    def encode(self, value: Any) -> bytes:
        """Encode ``value``; raise :class:`~microbroker.EncodeError` when it cannot."""
        ...

    def decode(self, data: bytes, into: Any) -> Any:
        """Decode ``data`` into an instance of ``into`` (a type, or ``typing.Any``).

        Raise any exception when the body does not fit: the caller wraps it in
        :class:`~microbroker.DecodeError` with the topic and content type.
        """
        ...


def is_protobuf_type(into: Any) -> bool:
    return isinstance(into, type) and issubclass(into, ProtoMessage)


class ProtobufCodec:
    """Protobuf binary encoding; decodes only into protobuf message classes."""

    content_type = PROTOBUF

    def encode(self, value: Any) -> bytes:
        if not isinstance(value, ProtoMessage):
            raise EncodeError(self.content_type, type(value), None)
        data: bytes = value.SerializeToString()
        return data

    def decode(self, data: bytes, into: Any) -> Any:
        if not is_protobuf_type(into):
            raise TypeError(f"{PROTOBUF} decodes into protobuf message classes, not {into!r}")
        return into.FromString(data)


class JsonCodec:
    """JSON: protobuf's JSON mapping for protobuf messages, plain JSON for everything else."""

    content_type = JSON

    def encode(self, value: Any) -> bytes:
        try:
            if isinstance(value, ProtoMessage):
                text: str = json_format.MessageToJson(value, indent=None)
                return text.encode()
            if dataclasses.is_dataclass(value) and not isinstance(value, type):
                value = dataclasses.asdict(value)
            elif hasattr(value, "model_dump_json"):  # pydantic v2
                dumped: str = value.model_dump_json()
                return dumped.encode()
            return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
        except (TypeError, ValueError) as exc:
            raise EncodeError(self.content_type, type(value), exc) from exc

    def decode(self, data: bytes, into: Any) -> Any:
        if is_protobuf_type(into):
            return json_format.Parse(data, into(), ignore_unknown_fields=True)
        if isinstance(into, type) and hasattr(into, "model_validate_json"):  # pydantic v2
            return into.model_validate_json(data)
        value = json.loads(data)
        if into is Any or into is None or into is object:
            return value
        if isinstance(into, type) and dataclasses.is_dataclass(into):
            if not isinstance(value, dict):
                raise TypeError(f"expected a JSON object for {into.__qualname__}")
            # Unknown fields are ignored, as for protobuf: a publisher that adds a field
            # must not break the subscribers that do not know it yet.
            names = {f.name for f in dataclasses.fields(into) if f.init}
            return into(**{key: item for key, item in value.items() if key in names})
        origin = typing.get_origin(into) or into
        if typing.is_typeddict(origin):
            origin = dict
        if (
            isinstance(origin, type)
            and not isinstance(value, origin)
            and not (origin is float and type(value) is int)
        ):
            raise TypeError(f"expected JSON {origin.__name__}, got {type(value).__name__}")
        return value


class RawCodec:
    """Bytes as they are."""

    content_type = OCTET_STREAM

    def encode(self, value: Any) -> bytes:
        if isinstance(value, bytes | bytearray | memoryview):
            return bytes(value)
        raise EncodeError(self.content_type, type(value), None)

    def decode(self, data: bytes, into: Any) -> Any:
        if into not in (bytes, Any, object, None):
            raise TypeError(f"{OCTET_STREAM} decodes into bytes, not {into!r}")
        return bytes(data)


class TextCodec:
    """UTF-8 text."""

    content_type = TEXT

    def encode(self, value: Any) -> bytes:
        if isinstance(value, str):
            return value.encode()
        raise EncodeError(self.content_type, type(value), None)

    def decode(self, data: bytes, into: Any) -> Any:
        if into not in (str, Any, object, None):
            raise TypeError(f"{TEXT} decodes into str, not {into!r}")
        return data.decode("utf-8")


def get_codec(content_type: str) -> Codec:
    """Return the codec registered for ``content_type`` (parameters and case ignored)."""
    table = registry().table("codec")
    info = table.get(normalize_content_type(content_type))
    if info is None:
        raise PluginNotFound(content_type, sorted(table), kind="codec")
    codec: Codec = info.target
    return codec


def content_type_for(value: Any) -> str:
    """The content type used for ``value`` when none is given: protobuf for protobuf messages."""
    if isinstance(value, ProtoMessage):
        return PROTOBUF
    if isinstance(value, bytes | bytearray | memoryview):
        return OCTET_STREAM
    return JSON


def content_type_for_type(into: Any) -> str:
    """The content type assumed for a body without one, from the type it is decoded into."""
    if is_protobuf_type(into):
        return PROTOBUF
    if into is bytes:
        return OCTET_STREAM
    if into is str:
        return TEXT
    return JSON
