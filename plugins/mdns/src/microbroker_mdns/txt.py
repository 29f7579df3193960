"""go-micro's mDNS TXT record: ``hex(zlib(json(mdnsTxt)))`` cut into 255-character strings.

go-micro's ``registry/mdns_registry.go`` describes each node with one TXT
record whose strings, joined, are the lower-case hex of a zlib stream of the
JSON encoding (``encoding/json.Marshal``) of::

    type mdnsTxt struct {
        Metadata  map[string]string
        Service   string
        Version   string
        Endpoints []*Endpoint
    }

The JSON is produced here byte for byte as Go's ``json.Marshal`` writes it
(field order, sorted map keys, HTML-safe escaping, ``null`` for a nil slice).
The zlib stream is a valid RFC 1950 stream that Go's ``compress/zlib`` reads;
its deflate bytes are Python's, not Go's (two compressors make different,
equally valid streams), so byte identity is claimed for the JSON and the hex
framing, not for the compressed bytes.
"""

from __future__ import annotations

import binascii
import json
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

MAX_STRING = 255
"""go-micro's limit for one TXT string, in hex characters."""

MAX_JSON = 1024 * 1024
"""The largest decompressed record accepted from the network (a zlib bomb is refused)."""

_HEX = "0123456789abcdef"


class TxtError(ValueError):
    """A TXT record that is not go-micro's encoding (bad hex, zlib or JSON, or wrong types)."""


@dataclass(slots=True)
class TxtRecord:
    """The content of one node's TXT record: go-micro's ``mdnsTxt``."""

    service: str
    version: str
    metadata: dict[str, str] = field(default_factory=dict)
    endpoints: list[dict[str, Any]] | None = None
    """go-micro's ``[]*Endpoint`` as decoded JSON; ``None`` is Go's nil slice (``null``)."""


# Go's encoding/json, as json.Marshal calls it (escapeHTML on). --------------------------


def go_string(value: str) -> str:
    """``value`` as Go's ``json.Marshal`` writes a string (Go 1.22 and later).

    ASCII control characters are ``\\b \\f \\n \\r \\t`` or ``\\u00XX`` (lower-case hex);
    ``< > &`` become ``\\u003c \\u003e \\u0026`` and U+2028/U+2029 ``\\u2028 \\u2029``;
    every other character is written as its UTF-8 bytes. A lone surrogate (which
    no UTF-8 string holds) is written as ``\\ufffd``, as Go writes invalid UTF-8.
    """
    out = ['"']
    for ch in value:
        code = ord(ch)
        if code < 0x80:
            if ch == '"':
                out.append('\\"')
            elif ch == "\\":
                out.append("\\\\")
            elif code >= 0x20 and ch not in "<>&":
                out.append(ch)
            elif ch == "\b":
                out.append("\\b")
            elif ch == "\f":
                out.append("\\f")
            elif ch == "\n":
                out.append("\\n")
            elif ch == "\r":
                out.append("\\r")
            elif ch == "\t":
                out.append("\\t")
            else:
                out.append("\\u00" + _HEX[code >> 4] + _HEX[code & 0xF])
        elif code in (0x2028, 0x2029):
            out.append(f"\\u{code:04x}")
        elif 0xD800 <= code <= 0xDFFF:
            out.append("\\ufffd")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _sort_key(key: str) -> bytes:
    # Go sorts map keys as byte strings (their UTF-8).
    return key.encode("utf-8", "surrogatepass")


def go_string_map(value: Mapping[str, str] | None) -> str:
    """A ``map[string]string`` as ``json.Marshal`` writes it: keys sorted, ``null`` for nil."""
    if value is None:
        return "null"
    items = sorted(value.items(), key=lambda kv: _sort_key(kv[0]))
    return "{" + ",".join(f"{go_string(k)}:{go_string(v)}" for k, v in items) + "}"


def _go_value(value: Mapping[str, Any] | None) -> str:
    # registry.Value: Name `json:"name"`, Type `json:"type"`, Values []*Value `json:"values"`.
    if value is None:
        return "null"
    values = value.get("values")
    return (
        "{"
        f'"name":{go_string(str(value.get("name") or ""))},'
        f'"type":{go_string(str(value.get("type") or ""))},'
        f'"values":{_go_list(values, _go_value)}'
        "}"
    )


def _go_endpoint(endpoint: Mapping[str, Any] | None) -> str:
    # registry.Endpoint: Request, Response *Value; Metadata map; Name, in this field order.
    if endpoint is None:
        return "null"
    return (
        "{"
        f'"request":{_go_value(endpoint.get("request"))},'
        f'"response":{_go_value(endpoint.get("response"))},'
        f'"metadata":{go_string_map(endpoint.get("metadata"))},'
        f'"name":{go_string(str(endpoint.get("name") or ""))}'
        "}"
    )


def _go_list(items: Sequence[Any] | None, encode: Any) -> str:
    if items is None:
        return "null"
    return "[" + ",".join(encode(item) for item in items) + "]"


def marshal(record: TxtRecord) -> bytes:
    """The JSON bytes go-micro's ``json.Marshal(&mdnsTxt{...})`` makes for ``record``."""
    text = (
        "{"
        f'"Metadata":{go_string_map(record.metadata)},'
        f'"Service":{go_string(record.service)},'
        f'"Version":{go_string(record.version)},'
        f'"Endpoints":{_go_list(record.endpoints, _go_endpoint)}'
        "}"
    )
    return text.encode("utf-8", "replace")


# The record -----------------------------------------------------------------------------


def encode(record: TxtRecord) -> list[str]:
    """The TXT strings for ``record``, as go-micro's ``encode`` cuts them (255 characters each)."""
    encoded = zlib.compress(marshal(record)).hex()
    if len(encoded) <= MAX_STRING:
        return [encoded]
    return [encoded[i : i + MAX_STRING] for i in range(0, len(encoded), MAX_STRING)]


def decode(strings: Sequence[str | bytes]) -> TxtRecord:
    """Read a TXT record written by go-micro (or by :func:`encode`).

    The strings are joined, hex-decoded (either case, nothing else), inflated
    (at most :data:`MAX_JSON` bytes) and parsed as Go's ``json.Unmarshal``
    fills ``mdnsTxt``: field names match case-insensitively, the last of a
    repeated field wins, and a field of the wrong type is an error.
    Raises :class:`TxtError` for anything else.
    """
    joined = b"".join(s.encode("ascii", "replace") if isinstance(s, str) else s for s in strings)
    try:
        compressed = binascii.a2b_hex(joined)
    except (binascii.Error, ValueError) as exc:
        raise TxtError(f"TXT record is not hex: {exc}") from None
    inflater = zlib.decompressobj()
    try:
        data = inflater.decompress(compressed, MAX_JSON)
    except zlib.error as exc:
        raise TxtError(f"TXT record is not a zlib stream: {exc}") from None
    if inflater.unconsumed_tail:
        raise TxtError(f"TXT record inflates to more than {MAX_JSON} bytes")
    if not inflater.eof:
        raise TxtError("TXT record is a truncated zlib stream")
    try:
        parsed = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise TxtError(f"TXT record is not JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise TxtError("TXT record JSON is not an object")
    fields: dict[str, Any] = {}
    for key, value in parsed.items():
        folded = key.lower()
        if folded in ("metadata", "service", "version", "endpoints"):
            fields[folded] = value
    metadata = fields.get("metadata")
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(
        v is None or isinstance(v, str) for v in metadata.values()
    ):
        raise TxtError("TXT record Metadata is not a map of strings")
    service = fields.get("service")
    version = fields.get("version")
    for name, value in (("Service", service), ("Version", version)):
        if value is not None and not isinstance(value, str):
            raise TxtError(f"TXT record {name} is not a string")
    endpoints = fields.get("endpoints")
    if endpoints is not None and not (
        isinstance(endpoints, list) and all(e is None or isinstance(e, dict) for e in endpoints)
    ):
        raise TxtError("TXT record Endpoints is not a list of objects")
    return TxtRecord(
        service=service or "",
        version=version or "",
        # Go's json.Unmarshal stores null as the zero value: "".
        metadata={str(k): v or "" for k, v in metadata.items()},
        endpoints=endpoints,
    )


def to_rdata(strings: Sequence[str]) -> bytes:
    """The TXT RDATA: each string prefixed by its length (go-micro's records never need more)."""
    parts = []
    for s in strings:
        raw = s.encode("ascii")
        if len(raw) > MAX_STRING:
            raise TxtError(f"a TXT string is at most {MAX_STRING} bytes, not {len(raw)}")
        parts.append(bytes((len(raw),)) + raw)
    return b"".join(parts)


def from_rdata(rdata: bytes) -> list[bytes]:
    """Split TXT RDATA into its strings; :class:`TxtError` if a length runs past the end."""
    strings = []
    offset = 0
    while offset < len(rdata):
        length = rdata[offset]
        end = offset + 1 + length
        if end > len(rdata):
            raise TxtError("TXT RDATA string runs past the record")
        strings.append(rdata[offset + 1 : end])
        offset = end
    return strings
