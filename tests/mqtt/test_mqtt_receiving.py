"""The lean receive route of microbroker-mqtt against gmqtt's own, on generated packets.

For every PUBLISH and PUBACK a server could send, the route must have
gmqtt's effects, in gmqtt's order: the same PUBACK bytes written, the same
message callback arguments, the same packet ids freed, the same error for a
malformed packet. No server is needed: both handlers get the same packets.
"""

from __future__ import annotations

from typing import Any

import gmqtt  # type: ignore[import-untyped]
from gmqtt.mqtt.constants import MQTTv50, MQTTv311  # type: ignore[import-untyped]
from gmqtt.mqtt.protocol import MQTTProtocol  # type: ignore[import-untyped]
from gmqtt.storage import PersistentStorage  # type: ignore[import-untyped]
from hypothesis import given, settings
from hypothesis import strategies as st

from microbroker_mqtt._receiving import speed_up_receiving


class _Storage(PersistentStorage):  # type: ignore[misc]
    def __init__(self, seen: list[Any]) -> None:
        super().__init__()
        self.seen = seen

    def remove_message_by_mid(self, mid: int) -> None:
        self.seen.append(("removed", mid))


class _Protocol:
    """What gmqtt's handler writes through: its own PUBACK builder, writes recorded."""

    send_command_with_mid = MQTTProtocol.send_command_with_mid

    def __init__(self, version: int, seen: list[Any]) -> None:
        self.proto_ver = version
        self.seen = seen

    def write_data(self, data: bytes) -> None:
        self.seen.append(("wrote", bytes(data)))


class _Connection:
    def __init__(self, protocol: _Protocol) -> None:
        self._protocol = protocol

    def send_command_with_mid(self, cmd: int, mid: int, dup: bool, reason_code: int = 0) -> None:
        self._protocol.send_command_with_mid(cmd, mid, dup, reason_code=reason_code)


def _client(version: int, lean: bool) -> tuple[Any, list[Any]]:
    seen: list[Any] = []
    client = gmqtt.Client(
        "test", optimistic_acknowledgement=True, persistent_storage=_Storage(seen)
    )
    client._connection_state.protocol_version = version
    client._connection = _Connection(_Protocol(version, seen))
    client.on_message = lambda _client, topic, payload, qos, properties: seen.append(
        ("message", topic, payload, qos, properties)
    )
    if lean:
        assert speed_up_receiving(client)
    return client, seen


def _handle(client: Any, seen: list[Any], cmd: int, packet: bytes) -> list[Any]:
    handler = client._package_handler
    try:
        handler._handle_packet(cmd, packet)
    except Exception as exc:  # gmqtt's __call__ logs these; both must raise alike
        seen.append(("raised", type(exc).__name__))
    seen.append(("ids in use", sorted(handler.id_generator._used_ids)))
    return seen


def _string(data: bytes) -> bytes:
    return len(data).to_bytes(2, "big") + data


def _vbi(value: int) -> bytes:
    out = bytearray()
    while True:
        value, digit = divmod(value, 128)
        out.append(digit | (0x80 if value else 0))
        if not value:
            return bytes(out)


texts = st.text(max_size=12).map(str.encode)
properties = st.lists(
    st.one_of(
        st.tuples(texts, texts).map(lambda kv: b"\x26" + _string(kv[0]) + _string(kv[1])),
        st.integers(1, 268_435_455).map(lambda n: b"\x0b" + _vbi(n)),
        st.just(b"\x23\x00\x05"),  # a topic alias
        st.just(b"\x03" + _string(b"application/json")),  # a content type
        st.just(b"\x26\x00\x02\xff\xfe\x00\x00"),  # a user property that is not UTF-8
    ),
    max_size=4,
).map(b"".join)


@st.composite
def publishes(draw: st.DrawFn) -> tuple[int, int, bytes]:
    version = draw(st.sampled_from([MQTTv50, MQTTv311]))
    qos = draw(st.sampled_from([0, 1, 1, 2]))
    cmd = 0x30 | draw(st.integers(0, 1)) << 3 | qos << 1 | draw(st.integers(0, 1))
    topic = draw(st.sampled_from([b"orders/created", b"a", b"", b"\xff\xfe", "é/ü".encode()]))
    packet = _string(topic)
    if qos:
        packet += draw(st.integers(1, 65535)).to_bytes(2, "big")
    if version == MQTTv50:
        block = draw(properties)
        packet += _vbi(len(block)) + block
    packet += draw(st.binary(max_size=30))
    cut = draw(st.one_of(st.none(), st.integers(0, len(packet))))
    return version, cmd, packet if cut is None else packet[:cut]


@settings(max_examples=400, deadline=None)
@given(publishes())
def test_a_publish_has_gmqtts_effects(case: tuple[int, int, bytes]) -> None:
    version, cmd, packet = case
    lean = _handle(*_client(version, lean=True), cmd, packet)
    gmqtts = _handle(*_client(version, lean=False), cmd, packet)
    assert lean == gmqtts


@given(
    st.sampled_from([MQTTv50, MQTTv311]),
    st.one_of(st.sampled_from([b"\x00\x01", b"\x00\x02\x00", b"\x00\x03"]), st.binary(max_size=5)),
)
def test_a_puback_has_gmqtts_effects(version: int, packet: bytes) -> None:
    results = []
    for lean in (True, False):
        client, seen = _client(version, lean)
        ids = client._package_handler.id_generator
        for _ in range(3):
            ids.next_id()  # ids 1, 2 and 3 in use
        results.append(_handle(client, seen, 0x40, packet))
    assert results[0] == results[1]


def test_the_route_is_left_to_gmqtt_when_debug_logging_is_on() -> None:
    """gmqtt logs every packet at DEBUG: with DEBUG on, its own path runs."""
    import logging

    client = gmqtt.Client("test", logger=logging.getLogger("test.debugging"))
    logging.getLogger("test.debugging").setLevel(logging.DEBUG)
    generic = client._package_handler._handle_packet
    assert not speed_up_receiving(client)
    assert client._package_handler._handle_packet == generic
