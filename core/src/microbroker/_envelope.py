"""go-micro's JSON envelope: a message as go-micro writes it where a transport carries no headers.

``json.Marshal(&broker.Message{Header, Body})``: ``{"Header": {...}, "Body":
"<base64>"}``. go-micro's http broker posts it, and its kafka, mqtt and nats
plugins publish it as the payload; microbroker's http broker and the plugins
that offer an ``envelope`` option read and write it through these two functions.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

_KEYS = frozenset(("Header", "Body"))


def encode_envelope(headers: dict[str, str], body: bytes) -> bytes:
    """``headers`` and ``body`` as go-micro's envelope (UTF-8 JSON, ``Body`` in base64)."""
    return json.dumps(
        {"Header": headers, "Body": base64.b64encode(body).decode("ascii")},
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode()


def decode_envelope(data: bytes) -> tuple[dict[str, str], bytes]:
    """The headers and body of go-micro's envelope ``data``.

    ``Header`` and ``Body`` may be null or one of them missing (no headers, an
    empty body), as Go writes and reads them. Raises ``ValueError`` for data
    that is not an envelope: not JSON, not an object, an object with neither
    key or with keys of its own (a JSON payload that only happens to be an
    object), headers that are not strings, a body that is not base64.
    """
    try:
        doc: Any = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"not an envelope: not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise ValueError('not an envelope: not a JSON object {"Header": {...}, "Body": "..."}')
    keys = doc.keys()
    if not keys or not keys <= _KEYS:
        raise ValueError(
            f'not an envelope: a JSON object with keys "Header" and "Body" only, not {sorted(keys)}'
        )
    headers = doc.get("Header")
    if headers is None:
        headers = {}
    elif not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        raise ValueError('not an envelope: "Header" must be an object of strings')
    raw_body = doc.get("Body")
    if raw_body is None:
        return headers, b""
    if not isinstance(raw_body, str):
        raise ValueError('not an envelope: "Body" must be a base64 string')
    try:
        return headers, base64.b64decode(raw_body, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f'not an envelope: "Body" is not valid base64 ({exc})') from None
