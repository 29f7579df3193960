"""Body codecs chosen by Content-Type: protobuf, JSON, raw, text, and third-party ones."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable
from typing import Any, TypedDict

import pytest
from _proto import OrderCreated
from google.protobuf import struct_pb2, timestamp_pb2, wrappers_pb2
from google.protobuf.message import DecodeError as ProtoDecodeError
from hypothesis import given
from hypothesis import strategies as st

import microbroker
from microbroker import Message, codecs


@dataclasses.dataclass
class Point:
    x: int
    y: int
    label: str = ""


class Tagged(TypedDict):
    tag: str


def test_protobuf_round_trip_of_a_runtime_built_message() -> None:
    codec = codecs.get_codec(codecs.PROTOBUF)
    order = OrderCreated(id=42, item="book", payload=b"\x00\xff", tags=["a", "b"])
    data = codec.encode(order)
    assert data == order.SerializeToString()
    assert codec.decode(data, OrderCreated) == order


@pytest.mark.parametrize(
    "message",
    [
        wrappers_pb2.StringValue(value="héllo"),
        wrappers_pb2.Int64Value(value=-(2**40)),
        timestamp_pb2.Timestamp(seconds=1_700_000_000, nanos=5),
        struct_pb2.Struct(fields={"a": struct_pb2.Value(number_value=1.5)}),
    ],
    ids=["StringValue", "Int64Value", "Timestamp", "Struct"],
)
@pytest.mark.parametrize("content_type", [codecs.PROTOBUF, codecs.JSON])
def test_well_known_types_round_trip(message: Any, content_type: str) -> None:
    codec = codecs.get_codec(content_type)
    assert codec.decode(codec.encode(message), type(message)) == message


def test_protobuf_json_mapping() -> None:
    codec = codecs.get_codec(codecs.JSON)
    data = codec.encode(OrderCreated(id=7, item="pen"))
    assert json.loads(data) == {"id": "7", "item": "pen"}  # int64 as a string, as protobuf maps it
    # Unknown fields are ignored, so that newer publishers do not break older subscribers.
    decoded = codec.decode(b'{"id": "7", "item": "pen", "added_later": 1}', OrderCreated)
    assert decoded == OrderCreated(id=7, item="pen")


@given(
    order_id=st.integers(min_value=-(2**63), max_value=2**63 - 1),
    item=st.text(),
    payload=st.binary(max_size=1024),
    tags=st.lists(st.text(max_size=10), max_size=5),
)
def test_protobuf_and_json_round_trip_any_values(
    order_id: int, item: str, payload: bytes, tags: list[str]
) -> None:
    order = OrderCreated(id=order_id, item=item, payload=payload, tags=tags)
    for content_type in (codecs.PROTOBUF, codecs.JSON):
        codec = codecs.get_codec(content_type)
        assert codec.decode(codec.encode(order), OrderCreated) == order


def test_protobuf_refuses_what_is_not_protobuf() -> None:
    codec = codecs.get_codec(codecs.PROTOBUF)
    with pytest.raises(microbroker.EncodeError) as info:
        codec.encode({"id": 1})
    assert info.value.content_type == codecs.PROTOBUF
    assert info.value.value_type is dict
    assert isinstance(info.value, TypeError)
    with pytest.raises(TypeError, match="protobuf message classes"):
        codec.decode(b"", dict)
    with pytest.raises(ProtoDecodeError):
        codec.decode(b"\xff\xff\xff", OrderCreated)


def test_json_dataclasses_dicts_and_scalars() -> None:
    codec = codecs.get_codec(codecs.JSON)
    point = Point(1, 2, "p")
    assert json.loads(codec.encode(point)) == {"x": 1, "y": 2, "label": "p"}
    assert codec.decode(codec.encode(point), Point) == point
    value = {"ünïcode": ["a", 1, None, True, 2.5], "nested": {"k": "v"}}
    assert codec.decode(codec.encode(value), dict) == value
    assert codec.decode(codec.encode(value), Any) == value
    assert codec.decode(codec.encode(value), dict[str, Any]) == value
    assert codec.decode(b'{"tag": "t"}', Tagged) == {"tag": "t"}
    assert codec.decode(b"[1, 2]", list) == [1, 2]
    assert codec.decode(b"3", float) == 3
    assert codec.encode("é") == '"é"'.encode()


def test_json_dataclass_ignores_unknown_fields() -> None:
    """As protobuf does: a newer publisher's extra field does not break an older subscriber."""
    codec = codecs.get_codec(codecs.JSON)
    assert codec.decode(b'{"x": 1, "y": 2, "added_later": true}', Point) == Point(1, 2)


def test_json_refuses_mismatched_bodies() -> None:
    """More cases, and the paths they name, are in test_typed_payloads.py."""
    codec = codecs.get_codec(codecs.JSON)
    with pytest.raises(codecs.ConversionError, match="expected an object for Point"):
        codec.decode(b"[1]", Point)
    with pytest.raises(codecs.ConversionError, match="expected an object, got an array"):
        codec.decode(b"[1]", dict)
    with pytest.raises(codecs.ConversionError, match="y: missing required field"):
        codec.decode(b'{"x": 1}', Point)
    with pytest.raises(json.JSONDecodeError):
        codec.decode(b"not json", dict)


def test_json_encode_error_names_the_type_and_cause() -> None:
    codec = codecs.get_codec(codecs.JSON)
    with pytest.raises(microbroker.EncodeError) as info:
        codec.encode({"when": object()})
    error = info.value
    assert error.content_type == codecs.JSON
    assert error.value_type is dict
    assert isinstance(error.cause, TypeError)
    assert "application/json" in str(error)
    with pytest.raises(microbroker.EncodeError):
        codec.encode({"bytes": ...})
    assert codec.encode(b"\x00\xff") == b'"AP8="'  # bytes are base64, as in protobuf's JSON


def test_raw_and_text_codecs() -> None:
    raw = codecs.get_codec(codecs.OCTET_STREAM)
    assert raw.encode(bytearray(b"\x00\x01")) == b"\x00\x01"
    assert raw.decode(b"\x00", bytes) == b"\x00"
    with pytest.raises(microbroker.EncodeError):
        raw.encode("text")
    text = codecs.get_codec(codecs.TEXT)
    assert text.decode(text.encode("héllo"), str) == "héllo"
    with pytest.raises(microbroker.EncodeError):
        text.encode(b"bytes")
    with pytest.raises(UnicodeDecodeError):
        text.decode(b"\xff", str)


@pytest.mark.parametrize(
    ("given_type", "normalized", "canonical"),
    [
        ("application/json", "application/json", codecs.JSON),
        ("Application/JSON; charset=utf-8", "application/json", codecs.JSON),
        ("  application/protobuf ", "application/protobuf", codecs.PROTOBUF),
        ("application/x-protobuf", "application/x-protobuf", codecs.PROTOBUF),
        ("application/proto", "application/proto", codecs.PROTOBUF),
        ("TEXT/PLAIN;charset=UTF-8", "text/plain", codecs.TEXT),
    ],
)
def test_content_types_are_normalized(given_type: str, normalized: str, canonical: str) -> None:
    assert codecs.normalize_content_type(given_type) == normalized
    assert codecs.get_codec(given_type).content_type == canonical


def test_default_content_types() -> None:
    assert codecs.content_type_for(OrderCreated()) == codecs.PROTOBUF
    assert codecs.content_type_for({"a": 1}) == codecs.JSON
    assert codecs.content_type_for(Point(1, 2)) == codecs.JSON
    assert codecs.content_type_for(b"raw") == codecs.OCTET_STREAM
    assert codecs.content_type_for_type(OrderCreated) == codecs.PROTOBUF
    assert codecs.content_type_for_type(bytes) == codecs.OCTET_STREAM
    assert codecs.content_type_for_type(str) == codecs.TEXT
    assert codecs.content_type_for_type(Point) == codecs.JSON


class UpperCodec:
    """A third-party codec: text stored upper-case."""

    content_type = "text/x-upper"

    def encode(self, value: Any) -> bytes:
        if not isinstance(value, str):
            raise microbroker.EncodeError(self.content_type, type(value), None)
        return value.upper().encode()

    def decode(self, data: bytes, into: Any) -> Any:
        return data.decode().lower()


def test_third_party_codec_through_register_codecs(plugin: Callable[..., str]) -> None:
    class Codecs:
        @microbroker.hookimpl
        def register_codecs(self, register: Callable[[str, Any], None]) -> None:
            register("Text/X-Upper", UpperCodec())  # normalized on registration

    with pytest.raises(microbroker.PluginNotFound):
        codecs.get_codec("text/x-upper")
    plugin(Codecs(), "upper-codec")
    codec = codecs.get_codec("text/x-upper; charset=utf-8")
    assert isinstance(codec, codecs.Codec)
    assert codec.decode(codec.encode("abc"), str) == "abc"
    assert microbroker.available("codec")["text/x-upper"].distribution == "upper-codec"


def test_a_codec_cannot_replace_a_built_in(plugin: Callable[..., str]) -> None:
    class Hijack:
        @microbroker.hookimpl
        def register_codecs(self, register: Callable[[str, Any], None]) -> None:
            register("application/json", UpperCodec())

    plugin(Hijack(), "hijack-codec")
    assert isinstance(codecs.get_codec(codecs.JSON), codecs.JsonCodec)
    assert any(
        e.distribution == "hijack-codec" and "application/json" in str(e)
        for e in microbroker.plugin_errors()
    )


@pytest.mark.parametrize(
    ("content_type", "body", "into", "expected"),
    [
        (
            "application/grpc+proto",
            wrappers_pb2.StringValue(value="from go").SerializeToString(),
            wrappers_pb2.StringValue,
            wrappers_pb2.StringValue(value="from go"),
        ),
        (
            "application/grpc",
            wrappers_pb2.StringValue(value="plain grpc").SerializeToString(),
            wrappers_pb2.StringValue,
            wrappers_pb2.StringValue(value="plain grpc"),
        ),
        ("application/grpc+json", b'{"value": "json"}', dict, {"value": "json"}),
    ],
)
async def test_go_micro_grpc_content_types_decode_as_protobuf_and_json(
    content_type: str, body: bytes, into: Any, expected: Any
) -> None:
    """go-micro's gRPC client publishes events with these types (an unframed body)."""
    broker = microbroker.get_broker("memory", address=f"grpc-{content_type}")
    service = microbroker.Service("grpc-aliases", broker=broker)
    got: list[Any] = []
    arrived = asyncio.Event()

    async def handler(msg: Any) -> None:
        got.append(msg)
        arrived.set()

    handler.__annotations__["msg"] = into
    service.server.subscribe(service.server.new_subscriber("events", handler))
    async with service:
        await broker.publish("events", Message(body, {"Content-Type": content_type}))
        await asyncio.wait_for(arrived.wait(), 5)
    assert got == [expected]
