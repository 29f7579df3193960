"""What travels between http brokers: go-micro's JSON envelope and microbroker's batch frames."""

from __future__ import annotations

import json
import struct
import sys
from dataclasses import dataclass
from typing import Any

# The envelope and the depth check are the core's (microbroker.transport), shared by every
# transport that speaks go-micro's envelope; re-exported for this broker's modules.
from ..._envelope import MAX_DEPTH as MAX_DEPTH
from ..._envelope import EnvelopeError as EnvelopeError
from ..._envelope import check_depth as _check_depth
from ..._envelope import decode_envelope as _decode_envelope
from ..._envelope import encode_envelope as encode_envelope

SERVICE = "micro.http.broker"
"""The registry service every subscription registers under (go-micro's ``serviceName``)."""
BROADCAST = "ff.http.broadcast"
"""The service version of a subscription without a queue group (go-micro's ``broadcastVersion``)."""
TOPIC_HEADER = "Micro-Topic"
JSON_TYPE = "application/json"
BATCH_TYPE = "application/x-microbroker-batch"
"""Content type of the batch requests microbroker peers send each other."""
PROTOCOL = "1"
"""Node metadata ``microbroker``: the peer understands batch requests of this version."""

_LEN = struct.Struct(">I")
_UNLIMITED = sys.maxsize

# JSON of at most this many bytes cannot nest deeper than MAX_DEPTH, valid or not.
_SHALLOW = 2 * MAX_DEPTH + 1


class WireError(EnvelopeError):
    """A request body that is not a valid envelope or batch (answered with 400)."""


@dataclass(frozen=True, slots=True)
class Limits:
    """What a subscription accepts in one message's headers, as they arrive.

    ``headers`` and ``header_bytes`` are the publisher's ``max_headers`` and
    ``max_header_bytes`` plus room for the ``Micro-Topic`` header the
    publishing broker adds; ``None`` is no limit.
    """

    headers: int | None
    header_bytes: int | None

    @classmethod
    def for_topic(cls, topic: str, max_headers: int | None, max_header_bytes: int | None) -> Limits:
        topic_header = len(TOPIC_HEADER) + len(topic.encode("utf-8", "surrogatepass"))
        return cls(
            None if max_headers is None else max_headers + 1,
            None if max_header_bytes is None else max_header_bytes + topic_header,
        )

    @property
    def json_tokens(self) -> int | None:
        """The most ``"``, ``,``, ``[`` and ``{`` an envelope within the limits can hold.

        Each header takes four quotes and a comma; every other one is a
        character of a name or value, which counts against ``header_bytes``.
        An envelope with more is refused before it is parsed, so that no
        request makes more Python objects than its headers may have.
        """
        if self.headers is None or self.header_bytes is None:
            return None
        return 5 * self.headers + self.header_bytes + 64

    @property
    def json_bytes(self) -> int | None:
        """The longest header JSON of a batch frame within the limits (``\\u`` escapes included)."""
        if self.headers is None or self.header_bytes is None:
            return None
        return 6 * self.header_bytes + 8 * self.headers + 2


def check_depth(data: bytes | bytearray) -> None:
    """Raise :class:`WireError` when ``data`` nests JSON deeper than :data:`MAX_DEPTH`."""
    try:
        _check_depth(data)
    except EnvelopeError as exc:
        raise WireError(str(exc)) from None


def check_tokens(data: bytes | bytearray, limits: Limits) -> None:
    """Raise :class:`WireError` when ``data`` holds more JSON values than ``limits`` allow."""
    most = limits.json_tokens
    if most is None or len(data) <= most:  # one byte a token at least
        return
    found = data.count(b'"') + data.count(b",") + data.count(b"{") + data.count(b"[")
    if found > most:
        check_depth(data)  # the better reason, when it is one
        raise WireError(
            f"too many headers (or other JSON values): {found} strings, separators and "
            f"brackets, more than {limits.headers} headers of {limits.header_bytes} bytes "
            "in all can hold"
        )


def check_headers(headers: dict[str, str], limits: Limits, json_length: int) -> None:
    """Raise :class:`WireError` for headers beyond ``limits``; ``json_length`` bounds their bytes.

    JSON is never shorter than the UTF-8 text it encodes, so the exact count
    is only made for headers whose JSON is longer than the limit.
    """
    most = limits.headers
    if most is not None and len(headers) > most:
        raise WireError(
            f"{len(headers)} headers, more than this subscriber's max_headers of {most - 1} "
            f"(and {TOPIC_HEADER})"
        )
    most = limits.header_bytes
    if most is not None and json_length > most:
        size = sum(
            len(name.encode("utf-8", "surrogatepass")) + len(value.encode("utf-8", "surrogatepass"))
            for name, value in headers.items()
        )
        if size > most:
            raise WireError(
                f"the headers are {size} bytes, more than this subscriber's max_header_bytes "
                f"(with {TOPIC_HEADER}: {most} bytes)"
            )


def decode_envelope(
    data: bytes | bytearray, limits: Limits | None = None
) -> tuple[dict[str, str], bytes]:
    """Parse go-micro's envelope (the core's :func:`~microbroker.transport.decode_envelope`).

    With ``limits``, an envelope with more headers (or more JSON values) than
    they allow is refused before it is parsed, and its headers are checked after.
    """
    if limits is not None:
        check_tokens(data, limits)
    try:
        headers, body = _decode_envelope(data)
    except EnvelopeError as exc:
        raise WireError(str(exc)) from None
    if limits is not None:
        # The JSON of the headers: the whole but the base64 of the body.
        check_headers(headers, limits, len(data) - (len(body) + 2) // 3 * 4)
    return headers, body


def encode_headers(headers: dict[str, str]) -> bytes:
    """The header part of a batch frame, encoded once per message and shared by its targets."""
    return json.dumps(headers, separators=(",", ":"), ensure_ascii=False).encode()


def encode_frame(attempt: int, head: bytes, body: bytes) -> bytes:
    """One message of a batch: attempt, length-prefixed header JSON, length-prefixed raw body.

    Raw bytes instead of base64: a third less to send and nothing to decode.
    """
    return b"".join((_LEN.pack(attempt), _LEN.pack(len(head)), head, _LEN.pack(len(body)), body))


def frame_parts(attempt: int, head: bytes, body: bytes) -> tuple[bytes, bytes, bytes, bytes]:
    """:func:`encode_frame` in pieces, for joining a whole batch at once."""
    return (_LEN.pack(attempt) + _LEN.pack(len(head)), head, _LEN.pack(len(body)), body)


def decode_batch(
    data: bytes | bytearray, limits: Limits | None = None
) -> list[tuple[int, dict[str, str], bytes]]:
    """Split a batch body into its messages: (attempt, headers, body).

    With ``limits``, each message's headers are held to them (header JSON
    too long for them is refused before it is parsed).
    """
    out = []
    view = memoryview(data)
    pos, end = 0, len(data)
    # The limits as plain ints (no limit: the largest), so that a frame pays a compare each.
    if limits is None:
        limits = Limits(None, None)
    most_json = limits.json_bytes or _UNLIMITED
    most_tokens = limits.json_tokens or _UNLIMITED
    most_headers = limits.headers or _UNLIMITED
    most_bytes = limits.header_bytes or _UNLIMITED
    try:
        while pos < end:
            (attempt,) = _LEN.unpack_from(view, pos)
            (n,) = _LEN.unpack_from(view, pos + 4)
            pos += 8
            if pos + n > end:
                raise WireError("truncated batch frame")
            if n > most_json:
                raise WireError(
                    f"a message's headers are {n} bytes of JSON, more than this subscriber's "
                    "max_header_bytes allows"
                )
            head = bytes(view[pos : pos + n])
            if n > most_tokens:
                check_tokens(head, limits)
            # Deeper than MAX_DEPTH takes more than twice as many bytes: most heads are shorter.
            if n > _SHALLOW and head.count(b"{") + head.count(b"[") > MAX_DEPTH:
                check_depth(head)
            headers: Any = json.loads(head)
            pos += n
            (m,) = _LEN.unpack_from(view, pos)
            pos += 4
            if pos + m > end:
                raise WireError("truncated batch frame")
            if not isinstance(headers, dict) or not all(
                isinstance(v, str) for v in headers.values()
            ):
                raise WireError("batch frame headers must be a JSON object of strings")
            if len(headers) > most_headers or n > most_bytes:
                check_headers(headers, limits, n)
            out.append((max(attempt, 1), headers, bytes(view[pos : pos + m])))
            pos += m
    except struct.error:
        raise WireError("truncated batch frame") from None
    except (ValueError, UnicodeDecodeError) as exc:
        if isinstance(exc, WireError):
            raise
        raise WireError(f"bad batch frame headers: {exc}") from None
    except RecursionError:  # not reached after check_depth; kept as a backstop
        raise WireError(f"the JSON is nested deeper than {MAX_DEPTH} levels") from None
    return out


# Results of a batch, one per message, streamed back as JSON lines ``[r, r, ...]``:
ACK = None
"""The handler acked the message."""
NACK = -1.0
"""The handler nacked (or raised): redeliver after the publisher's backoff.

A number >= 0 is a nack asking for redelivery after that many seconds."""
GONE = "gone"
"""The subscription ended before handling the message: deliver it elsewhere."""
BUSY = "busy"
"""The subscription's inbox is full: try again later."""
