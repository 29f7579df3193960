"""gmqtt's receive path, with the broker's own route for PUBLISH, PUBACK and PUBREL packets.

gmqtt acknowledges a QoS 1/2 PUBLISH when it receives it (under MQTT 3.1.1
it forces that), before any handler has run: a process that died then lost
everything it had received and not handled. :func:`install_receive_route`
gives a client's packet handler a route that takes every well-formed PUBLISH
and hands it to the broker *with its packet id and without acknowledging it*:
the broker acknowledges it once its handlers have settled it.

The route is also lean: per message, gmqtt unpacks a PUBLISH with format
strings built for it, parses its properties through a generic per-property
codec, logs twice and asks ``inspect`` whether the callback is a coroutine
function; each PUBACK the publisher gets back costs it as much again. Here
user properties and subscription identifiers (what this broker's messages
carry) are read directly, other properties through gmqtt's own parser, and
topic aliases as gmqtt keeps them. A malformed PUBLISH goes to gmqtt's own
code, which drops it (as it always did), as does every other packet type but
PUBACK (our publishes, acknowledged) and PUBREL (which also ends a QoS 2
message's exactly-once window here, before gmqtt answers with PUBCOMP).

Under it, :func:`install_reader` replaces gmqtt's read loop, which appended
every 64 KiB read to a ``bytes`` buffer (a copy of the whole buffer each
time): a 64 MiB message took 20 s to arrive, and one of the 256 MiB an MQTT
packet can carry never did. Here the buffer grows in place, and a packet
known to be incomplete is not parsed again until enough has come.

Both read gmqtt internals; they check those are there and raise
:class:`~microbroker_mqtt.MqttError` otherwise: without them the broker could
not keep its guarantees.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from gmqtt.mqtt.constants import MQTTv50  # type: ignore[import-untyped]
from gmqtt.mqtt.package import Package  # type: ignore[import-untyped]

from .errors import MqttError

logger = logging.getLogger("microbroker.broker.mqtt")

_PUBLISH = 0x30
_PUBACK = 0x40
_PUBREL = 0x60
_HANDLER_NEEDS = (
    "_handle_packet",
    "_handle_publish_packet",
    "_parse_properties",
    "_connection_state",
    "_remove_message_from_queue",
    "_server_topics_aliases",
    "id_generator",
)

#: ``on_publish(topic, payload, qos, mid, properties)``: ``mid`` is 0 at QoS 0.
OnPublish = Callable[[str, bytes, int, int, dict[str, Any]], None]


def parse_properties(
    packet: bytes, start: int, protocol_version: int
) -> tuple[dict[str, Any] | None, bytes | None]:
    """``(properties, rest)`` of the property block at ``packet[start:]``, in gmqtt's shape.

    Only user properties and subscription identifiers (what this broker's
    messages carry) are read here; ``(None, None)`` means "anything else: let
    gmqtt's own parser read it". Under MQTT 3.1.1 there is no property block.
    """
    if protocol_version < MQTTv50:
        return {}, packet[start:]
    if start >= len(packet):
        return None, None
    size = packet[start]
    if size >= 128:
        return None, None
    end = start + 1 + size
    i = start + 1
    users: list[tuple[str, str]] = []
    ids: list[int] = []
    try:
        while i < end:
            kind = packet[i]
            if kind == 0x26:
                n = (packet[i + 1] << 8) | packet[i + 2]
                j = i + 3 + n
                m = (packet[j] << 8) | packet[j + 1]
                k = j + 2 + m
                users.append((packet[i + 3 : j].decode(), packet[j + 2 : k].decode()))
                i = k
            elif kind == 0x0B:
                value, shift = 0, 0
                i += 1
                while True:
                    byte = packet[i]
                    value |= (byte & 0x7F) << shift
                    i += 1
                    if not byte & 0x80:
                        break
                    shift += 7
                ids.append(value)
            else:
                return None, None
    except (IndexError, UnicodeDecodeError):
        return None, None
    if i != end:
        return None, None
    properties: dict[str, Any] = {}
    if users:
        properties["user_property"] = users
    if ids:
        properties["subscription_identifier"] = ids
    return properties, packet[end:]


def install_receive_route(
    client: Any, on_publish: OnPublish, on_pubrel: Callable[[int], None]
) -> None:
    """Route ``client``'s PUBLISH packets to ``on_publish``, unacknowledged.

    ``on_pubrel(mid)`` is called for each PUBREL before gmqtt answers it.
    Raises :class:`~microbroker_mqtt.MqttError` when this gmqtt lacks what the
    route needs.
    """
    handler: Any = getattr(client, "_package_handler", None)
    missing = [name for name in _HANDLER_NEEDS if not hasattr(handler, name)]
    if missing:
        raise MqttError(
            f"this gmqtt lacks {', '.join(missing)}: microbroker-mqtt needs gmqtt 0.8 "
            "(pip install 'gmqtt>=0.8,<0.9')"
        )
    state = handler._connection_state
    generic_properties = handler._parse_properties
    generic_packet = handler._handle_packet
    generic_publish = handler._handle_publish_packet
    aliases = handler._server_topics_aliases
    monotonic = time.monotonic

    def parse(packet: bytes) -> tuple[dict[str, Any] | None, bytes | None]:
        found = parse_properties(packet, 0, state.protocol_version)
        if found[0] is None:
            return generic_properties(packet)  # type: ignore[no-any-return]
        return found

    def publish(cmd: int, raw: bytes) -> None:
        qos = (cmd >> 1) & 0x03
        size = len(raw)
        if qos == 3 or size < 2:  # malformed: gmqtt drops it
            generic_publish(cmd, raw)
            return
        end = 2 + ((raw[0] << 8) | raw[1])
        start = end + 2 if qos else end
        if start > size:  # cut short: gmqtt drops it
            generic_publish(cmd, raw)
            return
        properties, payload = parse_properties(raw, start, state.protocol_version)
        if properties is None:
            properties, payload = generic_properties(raw[start:])
            if properties is None or payload is None:  # gmqtt logs and drops it
                generic_publish(cmd, raw)
                return
        assert payload is not None
        topic_bytes = raw[2:end]
        if "topic_alias" in properties:
            alias = properties["topic_alias"][0]
            if topic_bytes:
                aliases[alias] = topic_bytes
            else:
                topic_bytes = aliases.get(alias, b"")
        if not topic_bytes:  # no topic, or an unknown alias: gmqtt warns and drops it
            generic_publish(cmd, raw)
            return
        try:
            topic = topic_bytes.decode()
        except UnicodeDecodeError:
            logger.warning("mqtt: a PUBLISH with a topic that is not UTF-8: %r", topic_bytes)
            topic = topic_bytes.decode(errors="replace")
        properties["dup"] = (cmd & 0x08) >> 3
        properties["retain"] = cmd & 0x01
        on_publish(topic, payload, qos, (raw[end] << 8) | raw[end + 1] if qos else 0, properties)

    def puback(cmd: int, raw: bytes) -> None:
        if len(raw) < 2:
            generic_packet(cmd, raw)
            return
        mid = (raw[0] << 8) | raw[1]
        handler.id_generator.free_id(mid)
        handler._remove_message_from_queue(mid)

    def handle_packet(cmd: int, packet: bytes) -> None:
        kind = cmd & 0xF0
        if kind == _PUBLISH:
            publish(cmd, packet)
        elif kind == _PUBACK:
            puback(cmd, packet)
        else:
            if kind == _PUBREL and len(packet) >= 2:
                on_pubrel((packet[0] << 8) | packet[1])
            generic_packet(cmd, packet)
            return
        handler._last_msg_in = monotonic()

    def logged_handle_packet(cmd: int, packet: bytes) -> None:
        # gmqtt logs every packet at DEBUG: with DEBUG on, so does the route.
        handler._logger.debug("[MqttPackageHandler] cmd: %s, packet: %s", hex(cmd), packet)
        handle_packet(cmd, packet)

    handler._parse_properties = parse
    debugging = getattr(handler, "_logger", logger).isEnabledFor(logging.DEBUG)
    handler._handle_packet = logged_handle_packet if debugging else handle_packet


# The reader ----------------------------------------------------------------------------

_READ_SIZE = 64 * 1024
_MAX_READ = 1024 * 1024
_PROTOCOL_NEEDS = ("_read_loop_future", "_connected", "_connection", "_transport", "read")


def split_packets(buf: bytes | bytearray) -> tuple[list[tuple[int, bytes]], int, int]:
    """The complete MQTT packets at the front of ``buf``: ``(packets, used, needed)``.

    ``packets`` are ``(first byte, rest after the length)``, as gmqtt's reader
    cuts them; ``used`` is the bytes they took; ``needed`` is the size of the
    next packet when its length is known and it is not all there (0 when even
    its length is not), and -1 for a length that is not a valid MQTT variable
    byte integer (more than four bytes).
    """
    packets: list[tuple[int, bytes]] = []
    size = len(buf)
    pos = 0
    while size - pos >= 2:
        length = 0
        mult = 1
        i = pos + 1
        while True:
            if i >= size:
                return packets, pos, 0
            byte = buf[i]
            length += (byte & 0x7F) * mult
            i += 1
            if not byte & 0x80:
                break
            mult *= 128
            if mult > 2_097_152:
                return packets, pos, -1
        end = i + length
        if end > size:
            return packets, pos, end - pos
        packets.append((buf[pos], bytes(buf[i:end])))
        pos = end
    return packets, pos, 0


async def _read_loop(protocol: Any) -> None:
    """gmqtt's ``MQTTProtocol._read_loop``, with a buffer that grows in place."""
    await protocol._connected.wait()
    buf = bytearray()
    needed = 0
    while protocol._connected.is_set():
        want = min(max(_READ_SIZE, needed - len(buf)), _MAX_READ)
        try:
            buf += await protocol.read(want)
        except ConnectionResetError:  # the server closed the connection
            break
        if needed > len(buf):
            continue
        packets, used, needed = split_packets(buf)
        if used:
            del buf[:used]
        connection = protocol._connection
        for cmd, data in packets:
            connection.put_package(Package(cmd, data))
        if needed < 0:
            # Not an MQTT length (more than four bytes): nothing after it can be read.
            logger.warning("mqtt: the server sent a malformed packet; closing the connection")
            protocol._transport.close()
            break
        if protocol._transport.is_closing():
            break


def install_reader(client: Any) -> None:
    """Read each of ``client``'s connections with :func:`_read_loop` instead of gmqtt's."""
    create = getattr(client, "_create_connection", None)
    if create is None:
        raise MqttError("this gmqtt lacks Client._create_connection: microbroker-mqtt needs 0.8")

    async def create_connection(*args: Any, **kwargs: Any) -> Any:
        connection = await create(*args, **kwargs)
        protocol = connection._protocol
        missing = [name for name in _PROTOCOL_NEEDS if not hasattr(protocol, name)]
        if missing:
            raise MqttError(
                f"this gmqtt's protocol lacks {', '.join(missing)}: microbroker-mqtt needs 0.8"
            )
        # Nothing was read yet: the server says nothing before the CONNECT, which gmqtt
        # sends once this returns. gmqtt's loop waits for its first read; it is replaced.
        loop_future = protocol._read_loop_future
        if loop_future is not None:
            loop_future.cancel()
        protocol._read_loop_future = asyncio.ensure_future(_read_loop(protocol))
        return connection

    client._create_connection = create_connection
