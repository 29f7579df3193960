"""gmqtt's receive path, with a lean route for the packets of every message.

Per message, gmqtt unpacks a PUBLISH with format strings built for it, parses
its properties through a generic per-property codec, logs twice, asks
``inspect`` whether the callback is a coroutine function and writes the PUBACK
through five calls; each PUBACK the publisher gets back costs it as much again.
:func:`speed_up_receiving` gives one client's packet handler a route for QoS 0
and QoS 1 PUBLISH packets (acknowledged on receipt, as this broker asks) and for
PUBACK, with the same effects in the same order: the same PUBACK bytes written
through gmqtt's protocol before the callback runs, the same callback arguments,
the same packet ids freed. Anything else (QoS 2, topic aliases, properties other
than user properties and subscription identifiers, a malformed packet) goes to
gmqtt's own code, as does every other packet type.

The route reads gmqtt internals; :func:`speed_up_receiving` checks they are
there and otherwise leaves gmqtt's path alone (with a warning).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from gmqtt.mqtt.constants import MQTTv50  # type: ignore[import-untyped]

try:
    from gmqtt.mqtt.utils import (  # type: ignore[import-untyped]
        is_coroutine_function_or_partial,
        run_coroutine_or_function,
    )
except ImportError:  # pragma: no cover - a gmqtt without them keeps its own path
    is_coroutine_function_or_partial = run_coroutine_or_function = None

logger = logging.getLogger("microbroker.mqtt")

_PUBLISH = 0x30
_PUBACK = 0x40
_HANDLER_NEEDS = (
    "_handle_packet",
    "_handle_publish_packet",
    "_parse_properties",
    "_optimistic_acknowledgement",
    "_connection_state",
    "_remove_message_from_queue",
    "id_generator",
    "on_message",
)


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


def speed_up_receiving(client: Any) -> bool:
    """Install the lean route on ``client``'s packet handler; ``False`` if gmqtt differs."""
    handler: Any = getattr(client, "_package_handler", None)
    missing = [name for name in _HANDLER_NEEDS if not hasattr(handler, name)]
    if run_coroutine_or_function is None:
        missing.append("gmqtt.mqtt.utils.run_coroutine_or_function")
    if missing:
        logger.warning(
            "mqtt: this gmqtt lacks %s: its own (slower) receive path is used",
            ", ".join(missing),
        )
        return False
    if getattr(handler, "_logger", logger).isEnabledFor(logging.DEBUG):
        return False  # gmqtt's path logs every packet: that is what DEBUG asks for
    state = handler._connection_state
    generic_properties = handler._parse_properties
    generic_packet = handler._handle_packet
    generic_publish = handler._handle_publish_packet
    monotonic = time.monotonic
    # The message callback, and whether gmqtt would run it as a coroutine.
    callback: list[Any] = [None, False]

    def parse(packet: bytes) -> tuple[dict[str, Any] | None, bytes | None]:
        found = parse_properties(packet, 0, state.protocol_version)
        if found[0] is None:
            return generic_properties(packet)  # type: ignore[no-any-return]
        return found

    def publish(cmd: int, raw: bytes) -> None:
        qos = (cmd >> 1) & 0x03
        if qos > 1 or not handler._optimistic_acknowledgement:
            generic_publish(cmd, raw)
            return
        size = len(raw)
        if size < 2:
            generic_publish(cmd, raw)
            return
        end = 2 + ((raw[0] << 8) | raw[1])
        start = end + 2 if qos else end
        if end == 2 or start > size:  # no topic (an alias?), or cut short: gmqtt decides
            generic_publish(cmd, raw)
            return
        properties, payload = parse_properties(raw, start, state.protocol_version)
        if properties is None:
            generic_publish(cmd, raw)
            return
        try:
            topic = raw[2:end].decode()
        except UnicodeDecodeError:
            generic_publish(cmd, raw)
            return
        properties["dup"] = (cmd & 0x08) >> 3
        properties["retain"] = cmd & 0x01
        if qos:
            # gmqtt's PUBACK (reason "success"), written as it writes one, before the callback.
            mid_high, mid_low = raw[end], raw[end + 1]
            protocol = client._connection._protocol
            if protocol.proto_ver == MQTTv50:
                protocol.write_data(bytes((_PUBACK, 4, mid_high, mid_low, 0, 0)))
            else:
                protocol.write_data(bytes((_PUBACK, 2, mid_high, mid_low)))
        on_message = handler.on_message
        if on_message is not callback[0]:
            callback[0] = on_message
            callback[1] = is_coroutine_function_or_partial(on_message)
        if callback[1]:
            run_coroutine_or_function(on_message, topic, payload, qos, properties)
        else:
            on_message(topic, payload, qos, properties)

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
            generic_packet(cmd, packet)
            return
        handler._last_msg_in = monotonic()

    handler._parse_properties = parse
    handler._handle_packet = handle_packet
    return True
