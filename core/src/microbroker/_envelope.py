"""go-micro's JSON envelope: a broker message as one JSON document, for transports without headers.

go-micro's brokers that cannot carry headers next to the body (its http
broker, its NATS and MQTT brokers) send ``json.Marshal(&broker.Message{...})``:
``{"Header": {"k": "v", ...}, "Body": "<base64>"}``. These two functions are
that format, shared by every transport that speaks it.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

_MEMBERS = frozenset(("Header", "Body"))


class EnvelopeError(ValueError):
    """Data that is not go-micro's JSON envelope (not JSON, not an object, wrong members)."""


def encode_envelope(headers: Mapping[str, str], body: bytes) -> bytes:
    """``{"Header": headers, "Body": "<base64 of body>"}`` as UTF-8 JSON, as go-micro writes it.

    Go's ``encoding/json`` writes the same members; it escapes ``<``, ``>`` and
    ``&`` in strings where this writes them as they are, which every JSON
    reader (Go's included) reads alike.
    """
    return json.dumps(
        {"Header": dict(headers), "Body": base64.b64encode(body).decode("ascii")},
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode()


def decode_envelope(data: bytes) -> tuple[dict[str, str], bytes]:
    """The headers and body of an envelope; :class:`EnvelopeError` for anything else.

    An envelope is a JSON object with the members ``Header`` (an object of
    strings) and ``Body`` (base64), and no others. Either may be missing or
    ``null`` (no headers, an empty body), as Go reads them; an object with
    neither, or with other members, is not an envelope (a plain JSON body).
    """
    try:
        doc: Any = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise EnvelopeError(f"the body is not JSON: {exc}") from None
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
        return raw_headers, base64.b64decode(raw_body, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise EnvelopeError(f'"Body" is not valid base64: {exc}') from None


__all__ = ["EnvelopeError", "decode_envelope", "encode_envelope"]
