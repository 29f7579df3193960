"""A message on the wire: stream entry fields (Streams), the envelope (Pub/Sub).

Streams: one field per header, named as the header, and the body in the field
``:body``. A header name is an HTTP token, which has no ``:``, so no header can
collide with the body. Other clients read and write the same fields
(``XADD orders * :body '{...}' Content-Type application/json``).

Pub/Sub has no headers: the payload is the toolkit's envelope, go-micro's
``{"Header": {...}, "Body": "<base64>"}`` (``encode_envelope``), as go-micro's
redis plugin publishes it.
"""

from __future__ import annotations

from collections.abc import Mapping

from microbroker.transport import Message

BODY = b":body"
#: Pub/Sub: the id that gives a message to one member of a queue group (taken off on receipt).
CLAIM_ID = "Micro-Redis-Claim"


def to_fields(message: Message) -> dict[bytes | str, bytes | str]:
    """The fields of the stream entry for ``message``."""
    fields: dict[bytes | str, bytes | str] = {BODY: bytes(message.body)}
    fields.update(message.headers)
    return fields


def from_fields(fields: Mapping[bytes, bytes]) -> Message:
    """The message of a stream entry's fields (an entry without ``:body`` has an empty body)."""
    body = b""
    headers: dict[str, str] = {}
    for name, value in fields.items():
        if name == BODY:
            body = value
        else:
            headers[name.decode(errors="replace")] = value.decode(errors="replace")
    return Message(body, headers)


def with_claim_id(headers: Mapping[str, str], claim_id: str) -> dict[str, str]:
    out = dict(headers)
    out[CLAIM_ID] = claim_id
    return out


def without_claim_id(headers: dict[str, str]) -> tuple[dict[str, str], str | None]:
    claim_id = headers.pop(CLAIM_ID, None)
    return headers, claim_id
