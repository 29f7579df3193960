"""Publishing on NATS: core NATS's lean write path, JetStream's stored publish, requests.

``Broker.publish`` has checked the topic, the headers and the size against
``capabilities.max_message_size`` before a message gets here. That size is
declared (:func:`declared_size`) from the server's ``max_payload`` minus the
framing the message may need on the wire, so that every message up to it fits;
the rare one that passes the count and still needs more framing than reserved
(over 64 headers, a longer JetStream message id, an envelope with escaped
characters) is measured exactly here and refused with
:class:`~microbroker.MessageTooLarge` before anything is sent.

A JetStream publish is retried here until ``publish_timeout``, always with the
same ``Nats-Msg-Id`` (so that a copy whose acknowledgement was lost is stored
once): sent again at once when the connection is lost (nats-py buffers it
until it has reconnected, to this server or another), when no answer came
within :data:`RESEND_AFTER`, and after a pause when nobody answered for the
stream (``503``: in a cluster, while its leader is elected).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import logging
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import api

from microbroker import InvalidTopic, Message, MessageTooLarge, NotConnected, PublishError
from microbroker.transport import (
    ID,
    backoff,
    check_headers,
    check_topic,
    encode_envelope,
    header_size,
    new_message_id,
)

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
from ._jetstream import IN_PROCESS, Streams, Unavailable, unavailable
from ._requesting import Requests
from ._subjects import check_literal, is_pattern
from .errors import NoResponders, RequestTimeout, StreamError
from .options import NatsOptions

logger = logging.getLogger("microbroker.broker.nats")

#: ``Capabilities.max_headers`` (the core's default, declared for the header block limit).
MAX_HEADERS = 256
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
#: The largest header block JetStream stores (nats-server refuses more: "header size
#: exceeds maximum allowed of 64k"), whatever ``max_payload`` is.
JETSTREAM_MAX_HEADER_BLOCK = 0xFFFF
#: Seconds a JetStream publish waits for its acknowledgement before it is sent again
#: (its id unchanged) within ``publish_timeout``: an acknowledgement lost with a node
#: of a cluster never comes, though this client's connection stayed up.
RESEND_AFTER = 2.0
# Seconds a publish that found nobody answering for its stream lets a lookup of the
# stream take (the stream deleted or its subjects changed, or a leader being elected).
_RECHECK = 1.0


class _Lost(Exception):
    """The connection was lost while a JetStream publish waited for its acknowledgement."""


_NO_RESPONDERS = "503"


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


def declared_header_bytes(*, jetstream: bool, envelope: bool, max_headers: int) -> int | None:
    """``max_header_bytes``: what the headers of every message fit into, or ``None`` for the
    core's default.

    JetStream stores a header block of at most :data:`JETSTREAM_MAX_HEADER_BLOCK`
    bytes; the declared limit counts header names and values, so the framing of
    ``max_headers`` headers and the ``Nats-Msg-Id`` line are taken off. With the
    envelope the headers travel in the payload, where ``max_message_size`` bounds them.
    """
    if not jetstream or envelope:
        return None
    return JETSTREAM_MAX_HEADER_BLOCK - BLOCK_FRAMING - HEADER_FRAMING * max_headers - _MSG_ID_LINE


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
        # JetStream's acknowledgements come to one inbox of this publisher's: an ack
        # subject per send (``<prefix><n>``) and a future waiting for it, which
        # connection_lost() can end so that the publish sends again at once.
        self._acks: dict[str, asyncio.Future[api.PubAck]] = {}
        self._ack_prefix = ""
        self._tokens = itertools.count()

    async def start(self) -> None:
        """Subscribe the inbox of JetStream's acknowledgements (JetStream mode)."""
        prefix = self.nc.new_inbox() + "."
        await self.nc.subscribe(prefix + "*", cb=self._on_ack)
        self._ack_prefix = prefix

    async def _on_ack(self, msg: Msg) -> None:
        future = self._acks.pop(msg.subject[len(self._ack_prefix) :], None)
        if future is None or future.done():
            return  # a send given up on (timed out, or sent again since)
        if msg.headers and msg.headers.get("Status") == _NO_RESPONDERS:
            future.set_exception(nats.js.errors.NoStreamResponseError())
            return
        try:
            answer = json.loads(msg.data)
            if "error" in answer:
                nats.js.errors.APIError.from_error(answer["error"])  # raises it
            future.set_result(api.PubAck.from_response(answer))
        except nats.js.errors.APIError as exc:
            future.set_exception(exc)
        except (ValueError, TypeError, KeyError) as exc:
            future.set_exception(PublishError(f"JetStream's acknowledgement was unreadable: {exc}"))

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
            block = header_block_size(send)
            size = len(body) + block
            if size > self.max_payload:
                raise self._too_large(topic, message, size)
            if msg_id is not None and block > JETSTREAM_MAX_HEADER_BLOCK:
                # A long Micro-ID travels twice (as itself and as Nats-Msg-Id).
                raise self._too_large(topic, message, size, header_block=block)
        return body, send or None

    def _too_large(
        self, topic: str, message: Message, wire: int, *, header_block: int | None = None
    ) -> MessageTooLarge:
        size = len(message.body) + header_size(message.headers)
        if header_block is not None:
            headers = header_size(message.headers)
            error = MessageTooLarge(topic, headers, headers, "nats", limit_name="max_header_bytes")
            error.args = (
                f"the headers of the message on {topic!r} need a header block of "
                f"{header_block} bytes with the Nats-Msg-Id copy of Micro-ID, more than "
                f"JetStream stores ({JETSTREAM_MAX_HEADER_BLOCK}): send a shorter Micro-ID "
                "or fewer headers",
            )
            return error
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
        # The server stores a message with a known id only once within duplicate_window,
        # so that sending it again (here, or the caller after a PublishError) cannot make
        # a duplicate; a message without one gets one for this publish's own retries.
        msg_id = options.pop("msg_id", None) or message.header(ID) or new_message_id()
        timeout = options.pop("timeout", None) or self.settings.publish_timeout
        if options:
            raise TypeError(
                f"nats publish() takes no option(s) {', '.join(options)}; "
                "in JetStream mode it takes msg_id and timeout"
            )
        body, headers = self._wire(topic, message, msg_id)
        self.in_flight += 1
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            if not streams.known(topic):
                await self._look_up(streams, topic, timeout)
            ack = await self._store(streams, topic, message, body, headers, timeout, deadline)
            if ack.duplicate:
                await self._check_duplicate(topic, ack.stream, ack.seq, msg_id, body, headers)
        finally:
            self.in_flight -= 1
            if not self.in_flight and self._idle is not None:
                self._idle.set()

    async def _store(
        self,
        streams: Streams,
        topic: str,
        message: Message,
        body: bytes,
        headers: dict[str, str] | None,
        timeout: float,
        deadline: float,
    ) -> api.PubAck:
        """Send until the server acknowledges, until ``deadline`` (see the module)."""
        loop = asyncio.get_running_loop()
        sends = 0
        silent = 0  # sends in a row that found nobody answering for the stream
        rechecked = False
        maybe_stored = False  # a send may have been stored, its acknowledgement lost
        while True:
            sends += 1
            remaining = deadline - loop.time()
            try:
                return await self._attempt(topic, body, headers, min(remaining, RESEND_AFTER))
            except (_Lost, TimeoutError) as exc:
                silent = 0
                maybe_stored = True
                why = "the connection was lost" if isinstance(exc, _Lost) else "no answer"
            except nats.js.errors.NoStreamResponseError:
                silent += 1
                why = "no stream"
                if not rechecked:
                    rechecked = True
                    await self._recheck(streams, topic, min(deadline - loop.time(), _RECHECK))
            except nats.js.errors.APIError as exc:
                # Answers that are no decision about the message: sent again after a pause.
                if not unavailable(exc):
                    raise PublishError(
                        f"JetStream refused the message on {topic!r}: {exc.description or exc}"
                    ) from exc
                silent += 1
                maybe_stored = maybe_stored or exc.err_code == IN_PROCESS
                why = str(exc.description)
            except nats.errors.Error as exc:
                raise self.error(topic, message, exc) from exc
            pause = backoff(silent, 0.05, cap=0.5) if silent else 0.0
            if loop.time() + pause >= deadline:
                raise self._unstored(topic, timeout, sends, why, maybe_stored)
            if pause:
                await asyncio.sleep(pause)

    async def _look_up(self, streams: Streams, topic: str, timeout: float) -> None:
        """Find (or make) the stream of a topic not published to yet, within the publish's time."""
        try:
            await asyncio.wait_for(streams.stream_for(topic), timeout)
        except TimeoutError as exc:
            raise PublishError(
                f"JetStream did not answer within {timeout}s while looking up the stream of "
                f"{topic!r} (in a cluster: electing a leader, or without a quorum); nothing "
                "was sent"
            ) from exc
        except StreamError as exc:
            raise PublishError(str(exc)) from exc

    async def _attempt(
        self, topic: str, body: bytes, headers: dict[str, str] | None, wait: float
    ) -> api.PubAck:
        """One send and its acknowledgement; :class:`_Lost` when the connection drops meanwhile.

        (nats-py's ``js.publish`` is a request whose wait cannot be ended from
        outside but by cancelling its task; this costs no task per publish.)
        """
        token = str(next(self._tokens))
        future: asyncio.Future[api.PubAck] = asyncio.get_running_loop().create_future()
        acks = self._acks
        acks[token] = future
        try:
            await self.nc.publish(topic, body, reply=self._ack_prefix + token, headers=headers)
            return await asyncio.wait_for(future, wait)
        finally:
            acks.pop(token, None)

    def connection_lost(self) -> None:
        """The connection dropped: JetStream publishes awaiting acknowledgement send again.

        An acknowledgement on its way through the lost server never comes;
        the copy sent again (same ``Nats-Msg-Id``) waits in nats-py's buffer
        until the client has reconnected.
        """
        for future in self._acks.values():
            if not future.done():
                future.set_exception(_Lost())

    async def _recheck(self, streams: Streams, topic: str, wait: float) -> None:
        """Nobody answered for ``topic``'s stream: look it up again, in case it changed.

        A stream deleted, or without the topic now, raises
        :class:`~microbroker.PublishError`; with ``subjects=None`` the topic is
        added again. A lookup that gets no answer either (a cluster electing
        the stream's leader) lets the publish go on trying.
        """
        streams.forget(topic)
        try:
            await asyncio.wait_for(streams.stream_for(topic), max(wait, 0.0))
        except (TimeoutError, Unavailable):
            return
        except StreamError as exc:
            raise PublishError(str(exc)) from exc

    def _unstored(
        self, topic: str, timeout: float, sends: int, why: str, maybe_stored: bool
    ) -> PublishError:
        """The error of a publish not acknowledged within its ``timeout``."""
        fate = (
            "it may or may not be stored: publish it again (with the same Micro-ID it is "
            "stored once)"
            if maybe_stored
            else "it was not stored"
        )
        if why == "no stream":
            return PublishError(
                f"no JetStream stream answered for {topic!r} within {timeout}s ({sends} "
                "sends): the stream that captures it has no leader (in a cluster: one is "
                "being elected after a node's death, or a quorum of its replicas is down), "
                "or no stream captures it any more (add it to the subjects of stream "
                f"{self.settings.stream!r}, option subjects); {fate}"
            )
        return PublishError(
            f"JetStream did not acknowledge the message on {topic!r} within {timeout}s "
            f"({sends} sends, the last: {why}); {fate}"
        )

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

    #: The requests of a FastClient connection (made at the first), see ``_requesting``.
    _requests: Requests | None = None

    async def request(self, topic: str, message: Message, timeout: float) -> Message:
        """A request on ``topic`` and its reply (NATS request/reply, NATS headers)."""
        check_topic(topic)
        if is_pattern(topic):
            check_literal(topic)
        headers = message.headers
        if headers:
            check_headers(headers)
        body = message.body
        size = len(body) + header_size(headers)
        if size > self.limit:
            raise MessageTooLarge(topic, size, self.limit, "nats")
        try:
            requests = self._requests
            if requests is not None:
                return await requests.request(topic, body, headers or None, timeout)
            nc = self.nc
            if type(nc) is FastClient:
                requests = self._requests = Requests(nc)
                return await requests.request(topic, body, headers or None, timeout)
            reply = await nc.request(topic, body, timeout=timeout, headers=headers or None)
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
