"""The receive route of microbroker-mqtt against gmqtt's own, on generated packets.

gmqtt acknowledges a QoS 1/2 PUBLISH on receipt and then calls the message
callback; the route calls the broker with the packet id and acknowledges
nothing (the broker does once the handlers have settled the message). So for
every PUBLISH a server could send, the route plus the acknowledgement the
broker writes (``ack_packet``) must have gmqtt's effects, in gmqtt's order:
the same acknowledgement bytes, the same callback arguments, the same packet
ids freed, the same error for a malformed packet. The same for PUBACK and
PUBREL, and for the reader that cuts the byte stream into packets. No server
is needed: both handlers get the same packets.
"""

from __future__ import annotations

from typing import Any

import gmqtt  # type: ignore[import-untyped]
from gmqtt.mqtt.constants import MQTTv50, MQTTv311  # type: ignore[import-untyped]
from gmqtt.mqtt.protocol import MQTTProtocol  # type: ignore[import-untyped]
from gmqtt.storage import PersistentStorage  # type: ignore[import-untyped]
from hypothesis import given, settings
from hypothesis import strategies as st

from microbroker_mqtt._delivery import ack_packet
from microbroker_mqtt._receiving import install_receive_route, split_packets


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

        def on_publish(topic: str, payload: bytes, qos: int, mid: int, properties: Any) -> None:
            if qos:  # what the broker writes once the message is settled
                seen.append(("wrote", ack_packet(mid, qos, version == MQTTv50)))
            seen.append(("message", topic, payload, qos, properties))

        install_receive_route(client, on_publish, lambda mid: seen.append(("released", mid)))
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
    qos = draw(st.sampled_from([0, 1, 1, 2, 2, 3]))
    cmd = 0x30 | draw(st.integers(0, 1)) << 3 | qos << 1 | draw(st.integers(0, 1))
    topic = draw(st.sampled_from([b"orders/created", b"a", b"", "é/ü".encode()]))
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


def test_a_topic_alias_is_resolved_as_gmqtt_resolves_it() -> None:
    """A server that uses aliases (this broker allows none) is still understood."""
    alias = b"\x23\x00\x05"
    first = _string(b"orders/created") + b"\x00\x07" + _vbi(len(alias)) + alias + b"one"
    second = _string(b"") + b"\x00\x08" + _vbi(len(alias)) + alias + b"two"
    results = []
    for lean in (True, False):
        client, seen = _client(MQTTv50, lean)
        for packet in (first, second):
            _handle(client, seen, 0x32, packet)
        results.append(seen)
    assert results[0] == results[1]
    assert [entry[1] for entry in results[0] if entry[0] == "message"] == ["orders/created"] * 2


def test_a_topic_that_is_not_utf8_is_delivered_with_replacement_characters() -> None:
    """gmqtt hands such a topic over as bytes; the route as text, and acknowledges it in turn."""
    client, seen = _client(MQTTv311, lean=True)
    _handle(client, seen, 0x32, _string(b"\xff\xfe") + b"\x00\x09payload")
    assert ("message", "\ufffd\ufffd", b"payload", 1, {"dup": 0, "retain": 0}) in seen
    assert ("wrote", bytes((0x40, 2, 0, 9))) in seen


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


@given(st.sampled_from([MQTTv50, MQTTv311]), st.integers(1, 65535))
def test_a_pubrel_is_answered_by_gmqtt_and_reported_first(version: int, mid: int) -> None:
    """gmqtt answers a PUBREL with PUBCOMP; the route tells the broker before it does."""
    packet = mid.to_bytes(2, "big")
    lean = _handle(*_client(version, lean=True), 0x62, packet)
    gmqtts = _handle(*_client(version, lean=False), 0x62, packet)
    assert lean == [("released", mid), *gmqtts]


def test_with_debug_logging_the_route_logs_every_packet_as_gmqtt_does(
    caplog: Any,
) -> None:
    import logging

    client = gmqtt.Client("test", logger=logging.getLogger("test.debugging"))
    client._connection_state.protocol_version = MQTTv311
    got: list[Any] = []
    with caplog.at_level(logging.DEBUG, logger="test.debugging"):
        install_receive_route(client, lambda *args: got.append(args), lambda mid: None)
        client._package_handler._handle_packet(0x30, _string(b"t") + b"x")
    assert got == [("t", b"x", 0, 0, {"dup": 0, "retain": 0})]
    assert any("cmd: 0x30" in record.getMessage() for record in caplog.records)


# The reader ------------------------------------------------------------------------------


class _Recording:
    def __init__(self) -> None:
        self.packets: list[tuple[int, bytes]] = []

    def put_package(self, package: Any) -> None:
        self.packets.append((package.cmd, bytes(package.data)))


def _gmqtts_packets(stream: bytes) -> tuple[list[tuple[int, bytes]], int]:
    protocol = MQTTProtocol.__new__(MQTTProtocol)
    protocol._connection = _Recording()
    used = MQTTProtocol._read_packet(protocol, stream)
    return protocol._connection.packets, used


packets = st.lists(
    st.tuples(
        st.integers(0x10, 0xFF),
        st.one_of(st.binary(max_size=40), st.integers(100, 20_000).map(lambda n: b"\x07" * n)),
    ),
    max_size=8,
)


@settings(max_examples=200, deadline=None)
@given(packets, st.data())
def test_the_reader_cuts_packets_as_gmqtt_does_whatever_the_reads(
    sent: list[tuple[int, bytes]], data: st.DataObject
) -> None:
    stream = b"".join(bytes((cmd,)) + _vbi(len(body)) + body for cmd, body in sent)
    # A packet cut short at the end: a whole packet's first bytes, never all of them
    # (random bytes could make a whole packet, b"\x00\x00" say).
    cmd, body = data.draw(st.tuples(st.integers(0x10, 0xFF), st.binary(max_size=40)))
    whole = bytes((cmd,)) + _vbi(len(body)) + body
    stream += whole[: data.draw(st.integers(0, len(whole) - 1), label="bytes of it sent")]
    # As the read loop does: reads of any size, the buffer kept between them.
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6), label="cuts"))
    buf = bytearray()
    got: list[tuple[int, bytes]] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        buf += stream[start:end]
        found, used, needed = split_packets(buf)
        assert needed >= 0
        got += found
        del buf[:used]
        if needed:
            assert needed > len(buf), "a packet said to be incomplete is there whole"
    assert got == sent
    assert (got, len(stream) - len(buf)) == _gmqtts_packets(stream)


def test_the_reader_refuses_a_length_longer_than_four_bytes() -> None:
    """A malformed length (MQTT-1.5.5: at most four bytes) stops the reader: the connection
    is closed. gmqtt waited for more data instead, which could never make a valid packet."""
    stream = b"\x30\x01x" + b"\x30\xff\xff\xff\xff\x01"
    assert split_packets(stream) == ([(0x30, b"x")], 3, -1)
