"""How a microbroker Message travels over MQTT, and the packet codec pieces it needs.

Under MQTT 5 the headers are user properties and the body is the payload;
under MQTT 3.1.1 (or ``envelope=True``) both travel in go-micro's JSON
envelope ``{"Header": {...}, "Body": "<base64>"}``, as go-micro's mqtt plugin
sends them.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence

from microbroker import Message

CONTENT_TYPE = "Content-Type"
_CONTENT_TYPE = CONTENT_TYPE.casefold()

#: User properties as they arrive: ``(name, value)`` pairs, in order.
Pairs = Sequence[tuple[str, str]]


def envelope(headers: Mapping[str, str], body: bytes) -> bytes:
    """go-micro's broker.Message as Go's encoding/json writes it: Header map, Body base64."""
    return json.dumps(
        {"Header": headers, "Body": base64.b64encode(body).decode("ascii")},
        ensure_ascii=False,
        separators=(",", ":"),
    ).encode()


def unwrap(payload: bytes) -> Message | None:
    """The message in a go-micro envelope, or ``None`` when ``payload`` is not one."""
    try:
        value = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(value, dict):
        return None
    header = value.get("Header") or {}
    body = value.get("Body") or ""
    if not isinstance(header, dict) or not isinstance(body, str):
        return None
    try:
        raw = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        return None
    return Message(raw, {str(k): str(v) for k, v in header.items()})


def decode(payload: bytes, pairs: Pairs | None, enveloped: bool) -> Message:
    """The Message a PUBLISH carries (a new one each call: its headers are the caller's)."""
    if enveloped:
        found = unwrap(payload)
        if found is not None:
            return found
        # Not an envelope (a device publishing plain MQTT): the payload as it is.
        return Message(payload, {})
    return Message(payload, dict(pairs) if pairs else {})


def content_type(pairs: Pairs | None) -> str | None:
    """The ``Content-Type`` among user properties, as ``Message.header`` finds it in the dict
    the pairs make: the name as written first, then compared case-insensitively."""
    if not pairs:
        return None
    found = None
    for name, value in pairs:
        if name == CONTENT_TYPE:
            found = value  # the last one wins, as in the dict
    if found is None:
        for name, value in pairs:
            if name.casefold() == _CONTENT_TYPE:
                return value
    return found


_TOPICS: dict[str, bytes] = {}
_KEYS: dict[str, bytes] = {}


def encoded_topic(topic: str) -> bytes:
    """The topic as an MQTT UTF-8 string (two-byte length, then the bytes), cached."""
    encoded = _TOPICS.get(topic)
    if encoded is None:
        raw = topic.encode()
        encoded = len(raw).to_bytes(2, "big") + raw
        if len(_TOPICS) >= 4096:
            _TOPICS.clear()
        _TOPICS[topic] = encoded
    return encoded


def user_properties(headers: Mapping[str, str]) -> bytes:
    """Headers as MQTT 5 user properties (id 0x26, then name and value as UTF-8 strings).

    gmqtt encodes them through a generic per-byte property codec that cost
    more than the rest of a publish; the bytes are the same.
    """
    parts: list[bytes] = []
    keys = _KEYS
    for name, value in headers.items():
        key = keys.get(name)
        if key is None:
            raw = name.encode()
            key = b"\x26" + len(raw).to_bytes(2, "big") + raw
            if len(keys) < 1024:
                keys[name] = key
        data = value.encode()
        parts.append(key)
        parts.append(len(data).to_bytes(2, "big"))
        parts.append(data)
    return b"".join(parts)


def vbi(value: int) -> bytes:
    """An MQTT variable byte integer."""
    if value < 128:
        return _SMALL_VBI[value]
    out = bytearray()
    while True:
        value, digit = divmod(value, 128)
        if value:
            out.append(digit | 0x80)
        else:
            out.append(digit)
            return bytes(out)


_SMALL_VBI = [bytes((n,)) for n in range(128)]


def vbi_size(value: int) -> int:
    """The bytes :func:`vbi` takes for ``value``."""
    return 1 if value < 128 else 2 if value < 16_384 else 3 if value < 2_097_152 else 4
