"""Body codecs, chosen by the ``Content-Type`` header.

Built in: ``application/protobuf`` (protobuf messages; also under
``application/x-protobuf`` and ``application/proto``), ``application/json``
(protobuf messages in their JSON mapping; dataclasses, TypedDicts, pydantic
models, enums, datetimes and the rest of the typed payloads, converted into the
annotated type both ways), ``application/octet-stream`` (raw bytes) and
``text/plain`` (str). A plugin adds more through the ``register_codecs`` hook.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from google.protobuf.message import Message as ProtoMessage

from . import _convert
from ._errors import ConversionError as ConversionError  # raised by JsonCodec.decode
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
    """JSON: protobuf's JSON mapping for protobuf messages, typed payloads for the rest.

    Decoding converts into the annotated type and validates (dataclasses, TypedDict,
    pydantic models, enums, datetimes, lists and dicts of them...); a value that does
    not fit raises :class:`ConversionError` naming the field (``items[2].price``).
    Unknown fields are ignored, so that a newer publisher does not break older
    subscribers. docs/typed-payloads.md has the rules.
    """

    content_type = JSON

    def encode(self, value: Any) -> bytes:
        try:
            return _convert.encode(value)
        except (TypeError, ValueError) as exc:
            raise EncodeError(self.content_type, type(value), exc) from exc

    def decode(self, data: bytes, into: Any) -> Any:
        return _convert.decode(data, into)


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
