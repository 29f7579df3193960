"""go-micro's JSON envelope: a broker message as one JSON document, for transports without headers.

go-micro's brokers that cannot carry headers next to the body (its http
broker, its NATS and MQTT brokers) send ``json.Marshal(&broker.Message{...})``:
``{"Header": {"k": "v", ...}, "Body": "<base64>"}``. These two functions are
that format, shared by every transport that speaks it.
"""

from __future__ import annotations

import binascii
import itertools
import json
import re
from collections.abc import Mapping
from typing import Any

_MEMBERS = frozenset(("Header", "Body"))

MAX_DEPTH = 64
"""The deepest JSON nesting an envelope may have (go-micro's needs 2).

Deeper JSON is refused before ``json.loads`` would reach Python's recursion
limit: a transport's reader must not be made to raise ``RecursionError``."""
# JSON of at most this many bytes cannot nest deeper than MAX_DEPTH, valid or not.
_SHALLOW = 2 * MAX_DEPTH + 1
# A JSON string, escapes included: brackets inside one do not nest.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
# Brackets become steps of +1 and -1 (as signed bytes); everything else is deleted.
_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))


class EnvelopeError(ValueError):
    """Data that is not go-micro's JSON envelope (not JSON, not an object, wrong members)."""


def check_depth(data: bytes | bytearray) -> None:
    """Raise :class:`EnvelopeError` when ``data`` nests JSON deeper than :data:`MAX_DEPTH`.

    Cheap for what is sent in practice: nesting needs brackets, and only a
    text with more than :data:`MAX_DEPTH` of them (in strings or not) is
    looked at closely, at C speed: strings removed, brackets turned into
    steps of one, the deepest running sum found.
    """
    if data.count(b"{") + data.count(b"[") <= MAX_DEPTH:
        return
    steps = _STRING.sub(b"", data).translate(_STEPS, _NOT_BRACKETS)
    if max(itertools.accumulate(memoryview(steps).cast("b")), default=0) > MAX_DEPTH:
        raise EnvelopeError(f"the JSON is nested deeper than {MAX_DEPTH} levels")


def encode_envelope(headers: Mapping[str, str], body: bytes) -> bytes:
    """``{"Header": headers, "Body": "<base64 of body>"}`` as UTF-8 JSON, as go-micro writes it.

    Go's ``encoding/json`` writes the same members; it escapes ``<``, ``>`` and
    ``&`` in strings where this writes them as they are, which every JSON
    reader (Go's included) reads alike.
    """
    return json.dumps(
        {"Header": dict(headers), "Body": binascii.b2a_base64(body, newline=False).decode("ascii")},
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode()


def decode_envelope(data: bytes | bytearray) -> tuple[dict[str, str], bytes]:
    """The headers and body of an envelope; :class:`EnvelopeError` for anything else.

    An envelope is a JSON object with the members ``Header`` (an object of
    strings) and ``Body`` (base64), and no others. Either may be missing or
    ``null`` (no headers, an empty body), as Go reads them; an object with
    neither, or with other members, is not an envelope (a plain JSON body).
    """
    if len(data) > _SHALLOW:
        check_depth(data)
    try:
        doc: Any = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise EnvelopeError(f"the body is not JSON: {exc}") from None
    except RecursionError:  # not reached after check_depth; kept as a backstop
        raise EnvelopeError(f"the JSON is nested deeper than {MAX_DEPTH} levels") from None
    if not isinstance(doc, dict):
        raise EnvelopeError('the body must be a JSON object {"Header": {...}, "Body": "<base64>"}')
    if not doc or not doc.keys() <= _MEMBERS:
        others = sorted(doc.keys() - _MEMBERS)
        raise EnvelopeError(
            'an envelope has the members "Header" and "Body" only'
            + (f", not {', '.join(map(repr, others))}" if others else "")
        )
    raw_headers = doc.get("Header")
    if raw_headers is None:
        raw_headers = {}
    if not isinstance(raw_headers, dict) or not all(
        isinstance(v, str) for v in raw_headers.values()
    ):
        raise EnvelopeError('"Header" must be an object of strings')
    raw_body = doc.get("Body")
    if raw_body is None:
        return raw_headers, b""
    if not isinstance(raw_body, str):
        raise EnvelopeError('"Body" must be a base64 string')
    try:
        # base64.b64decode(validate=True), without its copy of the text as bytes.
        return raw_headers, binascii.a2b_base64(raw_body, strict_mode=True)
    except (binascii.Error, ValueError) as exc:
        raise EnvelopeError(f'"Body" is not valid base64: {exc}') from None


__all__ = ["MAX_DEPTH", "EnvelopeError", "check_depth", "decode_envelope", "encode_envelope"]
