"""Publishing on NATS: core NATS's lean write path, JetStream's stored publish, requests.

``Broker.publish`` has checked the topic, the headers and the size against
``capabilities.max_message_size`` before a message gets here. That size is
declared (:func:`declared_size`) from the server's ``max_payload`` minus the
framing the message may need on the wire, so that every message up to it fits;
the rare one that passes the count and still needs more framing than reserved
(over 64 headers, a longer JetStream message id, an envelope with escaped
characters) is measured exactly here and refused with
:class:`~microbroker.MessageTooLarge` before anything is sent.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS

from microbroker import InvalidTopic, Message, MessageTooLarge, NotConnected, PublishError
from microbroker.transport import ID, check_headers, check_topic, encode_envelope, header_size

from ._client import (
    BLOCK_FRAMING,
    HEADER_FRAMING,
    WRITE_DONE,
    WRITE_FALLBACK,
    WRITE_FORCE,
    FastClient,
    header_block_size,
    parse_header_lines,
)
from ._jetstream import Streams
from ._subjects import check_literal, is_pattern
from .errors import NoResponders, RequestTimeout, StreamError
from .options import NatsOptions

logger = logging.getLogger("microbroker.nats")

#: Headers whose framing the declared size reserves room for.
RESERVED_HEADERS = 64
#: Characters of a JetStream message id (``Nats-Msg-Id``, a copy of ``Micro-ID``) reserved for.
RESERVED_MSG_ID = 64
MSG_ID = "Nats-Msg-Id"
_MSG_ID_LINE = len(MSG_ID) + HEADER_FRAMING + RESERVED_MSG_ID
#: ``{"Header":{},"Body":""}``, and ``"name":"value",`` around each header.
_ENVELOPE_FRAMING = len(b'{"Header":{},"Body":""}')
_ENVELOPE_PER_HEADER = len(b'"":"",')
# Bodies this far below the limit (with few headers) cannot need more than the reserve.
_NEAR = 64 * 1024


def declared_size(max_payload: int, *, jetstream: bool, envelope: bool) -> int:
    """``max_message_size`` for a server's ``max_payload``: what every message fits into.

    The server's limit is on the header block and the payload together; the
    declared size counts the body and the header names and values, so the
    framing is taken off: the ``NATS/1.0`` block and 4 bytes per header, for
    up to :data:`RESERVED_HEADERS` headers, and in JetStream the
    ``Nats-Msg-Id`` line. With the envelope the payload is JSON with the body
    in base64 (4 bytes for 3), so the room left is three quarters of it.
    """
    room = max_payload
    if envelope:
        if jetstream:  # the envelope travels with a header block holding the message id alone
            room -= BLOCK_FRAMING + _MSG_ID_LINE
        # Base64 rounds up to whole groups of 4: 3 bytes more at most.
        room -= _ENVELOPE_FRAMING + _ENVELOPE_PER_HEADER * RESERVED_HEADERS + 3
        return max(0, room * 3 // 4)
    room -= BLOCK_FRAMING + HEADER_FRAMING * RESERVED_HEADERS
    if jetstream:
        room -= _MSG_ID_LINE
    return max(0, room)


class Publisher:
    """The publishing half of one connection (made on connect, dropped on disconnect)."""

    def __init__(self, nc: NATS, settings: NatsOptions, streams: Streams | None) -> None:
        self.nc = nc
        self.settings = settings
        self.streams = streams
        self.envelope = settings.uses_envelope
        self.max_payload = nc.max_payload
        self.limit = declared_size(
            self.max_payload, jetstream=streams is not None, envelope=self.envelope
        )
        #: Core NATS through FastClient, without the envelope: the lean write path.
        self.lean = type(nc) is FastClient and streams is None and not self.envelope
        self._near = self.max_payload - _NEAR
        #: JetStream publishes waiting for their acknowledgement, for disconnect to wait on.
        self.in_flight = 0
        self._idle: asyncio.Event | None = None

    async def send(self, topic: str, message: Message, options: dict[str, Any]) -> None:
        """Publish ``message`` on ``topic`` (checked by ``Broker.publish`` already)."""
        if "*" in topic or ">" in topic:
            check_literal(topic)
        if self.lean and not options:
            body = message.body
            headers = message.headers or None
            nc: FastClient = self.nc  # type: ignore[assignment]  # lean says so
            try:
                state = nc.write_publish(topic, body, headers)
                if state == WRITE_DONE:
                    return
                if state != WRITE_FALLBACK:
                    await nc.kick(state == WRITE_FORCE)
                    return
                await nc.publish(topic, body, headers=headers)
            except nats.errors.Error as exc:
                raise self.error(topic, message, exc) from exc
            return
        if self.streams is not None:
            await self._send_jetstream(topic, message, options)
            return
        if options:
            raise TypeError(f"nats publish() takes no option(s) {', '.join(options)} in core mode")
        body, headers = self._wire(topic, message, None)
        try:
            await self.nc.publish(topic, body, headers=headers)
        except nats.errors.Error as exc:
            raise self.error(topic, message, exc) from exc

    def _wire(
        self, topic: str, message: Message, msg_id: str | None
    ) -> tuple[bytes, dict[str, str] | None]:
        """The payload and NATS headers of ``message``, measured exactly where it matters."""
        headers = message.headers
        if self.envelope:
            payload = encode_envelope(headers, message.body)
            block = BLOCK_FRAMING + len(MSG_ID) + HEADER_FRAMING + len(msg_id) if msg_id else 0
            if len(payload) + block > self.max_payload:
                raise self._too_large(topic, message, len(payload) + block)
            return payload, {MSG_ID: msg_id} if msg_id else None
        body = message.body
        send = headers
        if msg_id:
            send = dict(headers)
            send[MSG_ID] = msg_id
        if send and (
            len(body) > self._near
            or len(send) > RESERVED_HEADERS
            or (msg_id is not None and len(msg_id) > RESERVED_MSG_ID)
        ):
            size = len(body) + header_block_size(send)
            if size > self.max_payload:
                raise self._too_large(topic, message, size)
        return body, send or None

    def _too_large(self, topic: str, message: Message, wire: int) -> MessageTooLarge:
        size = len(message.body) + header_size(message.headers)
        error = MessageTooLarge(topic, size, self.limit, "nats")
        what = "in go-micro's envelope" if self.envelope else "with its NATS header block"
        error.args = (
            f"the message on {topic!r} is {size} bytes (body and headers) and needs {wire} "
            f"bytes on the wire {what}, more than the server's max_payload of "
            f"{self.max_payload} bytes: the nats broker's max_message_size ({self.limit}) "
            f"reserves framing for {RESERVED_HEADERS} headers; send fewer headers or a "
            "smaller body",
        )
        return error

    async def _send_jetstream(self, topic: str, message: Message, options: dict[str, Any]) -> None:
        streams = self.streams
        assert streams is not None
        msg_id = options.pop("msg_id", None) or message.header(ID)
        timeout = options.pop("timeout", None) or self.settings.publish_timeout
        if options:
            raise TypeError(
                f"nats publish() takes no option(s) {', '.join(options)}; "
                "in JetStream mode it takes msg_id and timeout"
            )
        # The server stores a message with a known id only once within duplicate_window,
        # so that publishing again after a timeout cannot make a duplicate.
        body, headers = self._wire(topic, message, msg_id)
        self.in_flight += 1
        try:
            if not streams.known(topic):
                try:
                    await streams.stream_for(topic)
                except StreamError as exc:
                    raise PublishError(str(exc)) from exc
            for attempt in (1, 2):
                try:
                    ack = await streams.js.publish(topic, body, timeout=timeout, headers=headers)
                except nats.js.errors.NoStreamResponseError as exc:
                    # Another broker may have rewritten the stream's subjects meanwhile.
                    streams.forget(topic)
                    if attempt == 2 or self.settings.subjects is not None:
                        raise PublishError(
                            f"no JetStream stream captures {topic!r}: add it to the subjects of "
                            f"stream {self.settings.stream!r} (option subjects)"
                        ) from exc
                    try:
                        await streams.stream_for(topic)
                    except StreamError as again:
                        raise PublishError(str(again)) from again
                    continue
                except nats.errors.TimeoutError as exc:
                    raise PublishError(
                        f"JetStream did not acknowledge the message on {topic!r} within "
                        f"{timeout}s; it may or may not be stored: publish it again (with the "
                        "same Micro-ID it is stored once)"
                    ) from exc
                except nats.js.errors.APIError as exc:
                    raise PublishError(
                        f"JetStream refused the message on {topic!r}: {exc.description or exc}"
                    ) from exc
                except nats.errors.Error as exc:
                    raise self.error(topic, message, exc) from exc
                if ack.duplicate:
                    await self._check_duplicate(topic, ack.stream, ack.seq, msg_id, body, headers)
                return
        finally:
            self.in_flight -= 1
            if not self.in_flight and self._idle is not None:
                self._idle.set()

    async def _check_duplicate(
        self,
        topic: str,
        stream: str,
        seq: int,
        msg_id: str | None,
        body: bytes,
        headers: dict[str, str] | None,
    ) -> None:
        """JetStream stored nothing: the id is that of a message stored within duplicate_window.

        That is what the id is for when the same message is published again
        (after a timeout, say). A *different* message with the id of another is
        lost if this passes for stored: the stored one is read back and
        compared, and a different one raises :class:`~microbroker.PublishError`.
        """
        try:
            stored = await self.streams.js.get_msg(stream, seq=seq)  # type: ignore[union-attr]
            raw = base64.b64decode(stored.hdrs) if stored.hdrs else b""
            kept = parse_header_lines(raw[len(b"NATS/1.0\r\n") :]) if raw else {}
        except Exception as exc:
            logger.warning(
                "nats: JetStream took the message on %r for a duplicate of message %d of "
                "stream %r (same Nats-Msg-Id %r) and did not store it; that message could not "
                "be read back to compare (%s)",
                topic,
                seq,
                stream,
                msg_id,
                exc,
            )
            return
        sent = {name: value.strip() for name, value in (headers or {}).items()}
        if stored.subject == topic and (stored.data or b"") == body and kept == sent:
            logger.debug("nats: %r was stored before (Nats-Msg-Id %r): not again", topic, msg_id)
            return
        raise PublishError(
            f"JetStream did not store the message on {topic!r}: its id {msg_id!r} "
            f"(Nats-Msg-Id, from Micro-ID or msg_id=) is that of another message, stored as "
            f"{seq} in stream {stream!r} within duplicate_window "
            f"({self.settings.duplicate_window}s), and the server drops the second as a "
            "duplicate: give each message an id of its own"
        )

    async def wait_idle(self, timeout: float) -> None:
        """Wait (up to ``timeout`` seconds) for JetStream publishes awaiting their ack."""
        if not self.in_flight:
            return
        self._idle = asyncio.Event()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            logger.warning(
                "nats: %d JetStream publish(es) still unacknowledged after %ss",
                self.in_flight,
                timeout,
            )

    async def request(self, topic: str, message: Message, timeout: float) -> Message:
        """A request on ``topic`` and its reply (NATS request/reply, NATS headers)."""
        check_topic(topic)
        if is_pattern(topic):
            check_literal(topic)
        headers = message.headers
        if headers:
            check_headers(headers)
        size = len(message.body) + header_size(headers)
        if size > self.limit:
            raise MessageTooLarge(topic, size, self.limit, "nats")
        try:
            reply = await self.nc.request(
                topic, message.body, timeout=timeout, headers=headers or None
            )
        except nats.errors.NoRespondersError as exc:
            raise NoResponders(f"nobody serves requests on {topic!r}") from exc
        except nats.errors.TimeoutError as exc:
            raise RequestTimeout(f"no reply on {topic!r} within {timeout}s") from exc
        except nats.errors.Error as exc:
            raise self.error(topic, message, exc) from exc
        return Message(reply.data, reply.headers or {})

    def error(self, topic: str, message: Message, exc: Exception) -> Exception:
        """The microbroker error for a nats-py error raised by a publish on ``topic``."""
        if isinstance(exc, nats.errors.ConnectionClosedError | nats.errors.ConnectionDrainingError):
            return NotConnected(f"cannot publish on {topic!r}: the nats connection is closed")
        if isinstance(exc, nats.errors.BadSubjectError):
            return InvalidTopic(f"{topic!r} is not a valid NATS subject")
        if isinstance(exc, nats.errors.OutboundBufferLimitError):
            return PublishError(
                f"cannot publish on {topic!r}: the connection is down and its reconnect "
                f"buffer ({self.settings.pending_size} bytes, option pending_size) is full"
            )
        if isinstance(exc, nats.errors.MaxPayloadError):
            headers = message.headers
            wire = len(message.body) + (header_block_size(headers) if headers else 0)
            return self._too_large(topic, message, wire)
        return PublishError(f"cannot publish on {topic!r}: {exc}")
