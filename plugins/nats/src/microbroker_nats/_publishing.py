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

With ``publish_acks="async"`` a JetStream publish returns once the message is
written and counted among those awaiting their acknowledgement (at most
``max_pending_acks``; a publish beyond waits for room). The common answer, a
PubAck without ``duplicate``, settles it in the reader's frame, without a task.
Anything else (no answer within :data:`RESEND_AFTER`, a lost connection, a
``503``, a duplicate to compare) hands it to a task that runs the very loop a
synchronous publish runs, until the publish's own ``publish_timeout``; what that
loop gives up on is an :class:`~microbroker_nats.UnackedPublish`, reported to
the ``on_error`` hooks and raised (with the others) by ``flush()``.
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
    check_topic,
    checked_length,
    encode_envelope,
    header_size,
    new_message_id,
    report_error,
)

from ._client import (
    BLOCK_FRAMING,
    HEADER_FRAMING,
    WRITE_DONE,
    WRITE_FALLBACK,
    WRITE_FORCE,
    FastClient,
    Item,
    header_block_size,
    parse_header_lines,
)
from ._jetstream import IN_PROCESS, Streams, Unavailable, unavailable
from ._requesting import Requests
from ._subjects import check_literal, is_pattern
from .errors import NoResponders, RequestTimeout, StreamError, UnackedPublish, UnackedPublishes
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
# How a PubAck of a stored message begins (nats-server writes "error" first when there
# is one); one without "duplicate" needs no parsing to tell that it is a plain success.
_STORED = b'{"stream":'
_DUPLICATE = b'"duplicate"'
# The answer to a synchronous publish whose PubAck was a plain success (only
# ``duplicate`` is read of it then).
_STORED_ACK = api.PubAck(stream="", seq=0)
#: ``UnackedPublish`` errors kept for ``flush()`` (the count goes on beyond).
KEPT_FAILURES = 1000

# An asynchronous publish awaiting its acknowledgement: topic, message, the wire body
# and headers (to send again), its message id, when it was sent, its deadline, its timeout.
_Entry = tuple[str, Message, bytes, dict[str, str] | None, str, float, float, float]


def _read_ack(data: bytes, no_responders: bool) -> api.PubAck | Exception:
    """JetStream's answer to a publish: its PubAck, or the error it says."""
    if no_responders:
        return nats.js.errors.NoStreamResponseError()
    if data.startswith(_STORED) and _DUPLICATE not in data:
        return _STORED_ACK
    try:
        answer = json.loads(data)
        if "error" in answer:
            nats.js.errors.APIError.from_error(answer["error"])  # raises it
        return api.PubAck.from_response(answer)
    except nats.js.errors.APIError as exc:
        return exc
    except (ValueError, TypeError, KeyError) as exc:
        return PublishError(f"JetStream's acknowledgement was unreadable: {exc}")


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


def _expire(future: asyncio.Future[api.PubAck]) -> None:
    """No acknowledgement came in time (see :meth:`Publisher._attempt`)."""
    if not future.done():
        future.set_exception(TimeoutError())


def _unused(item: Item) -> None:
    """The refusal handler of the acknowledgement inbox, which refuses nothing."""


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
        # publish_acks="async": publishes written and awaiting their acknowledgement, by
        # ack token (oldest first), and how many are unsettled (these, and those a task
        # sends again); publish waits on _room while max_pending_acks are.
        self.async_acks = streams is not None and settings.publish_acks == "async"
        self.max_unacked = settings.max_pending_acks
        self._fast = type(nc) is FastClient
        self._unacked: dict[str, _Entry] = {}
        self.unacked = 0
        self._room: asyncio.Future[None] | None = None
        self._retrying: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        #: Asynchronous publishes given up on since the last flush(): kept (the first
        #: KEPT_FAILURES) and counted.
        self.failures: list[UnackedPublish] = []
        self.failed = 0

    async def start(self) -> None:
        """Subscribe the inbox of JetStream's acknowledgements (JetStream mode)."""
        prefix = self.nc.new_inbox() + "."
        self._ack_prefix = prefix
        nc = self.nc
        if isinstance(nc, FastClient):
            # Acknowledgements go from the reader to _offer_ack, without a Msg or a queue.
            await nc.subscribe_sink(prefix + "*", "", self._offer_ack, _unused, statuses=True)
        else:
            await nc.subscribe(prefix + "*", cb=self._on_ack)
        if self.async_acks:
            self._sweeper = asyncio.create_task(self._sweep())

    def _offer_ack(self, item: Item) -> bool:
        headers = item[3]
        no_responders = isinstance(headers, bytes) and headers[9:12] == b"503"
        self._ack(item[0][len(self._ack_prefix) :], item[2], no_responders)
        return True

    async def _on_ack(self, msg: Msg) -> None:
        headers = msg.headers
        no_responders = headers is not None and headers.get("Status") == _NO_RESPONDERS
        self._ack(msg.subject[len(self._ack_prefix) :], msg.data, no_responders)

    def _ack(self, token: str, data: bytes, no_responders: bool) -> None:
        """JetStream answered the send of ``token``: settle its publish."""
        future = self._acks.pop(token, None)
        if future is not None:
            if not future.done():
                answer = _read_ack(data, no_responders)
                if isinstance(answer, Exception):
                    future.set_exception(answer)
                else:
                    future.set_result(answer)
            return
        entry = self._unacked.pop(token, None)
        if entry is None:
            return  # a send given up on (timed out, or sent again since)
        if not no_responders and data.startswith(_STORED) and _DUPLICATE not in data:
            self._settled()  # stored: the common case, settled here
            return
        answer = _read_ack(data, no_responders)
        if isinstance(answer, Exception):
            self._retry(entry, answer, None)
        elif answer.duplicate:
            self._retry(entry, None, answer)
        else:
            self._settled()

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

    async def send_async(self, topic: str, message: Message, options: dict[str, Any]) -> None:
        """A JetStream publish with ``publish_acks="async"``: written, its ack awaited apart.

        Returns once the message is written (or buffered while reconnecting) and
        counted among the unacknowledged, waiting first while ``max_pending_acks``
        are. A topic not published to yet is looked up (or added) first. What
        cannot be sent raises here, as a synchronous publish does; what is sent
        and not acknowledged goes to :meth:`_failed`.
        """
        if "*" in topic or ">" in topic:
            check_literal(topic)
        given_id: str | None = None
        given_timeout: float | None = None
        if options:
            given_id = options.pop("msg_id", None)
            given_timeout = options.pop("timeout", None)
            if options:
                raise TypeError(
                    f"nats publish() takes no option(s) {', '.join(options)}; "
                    "in JetStream mode it takes msg_id and timeout"
                )
        msg_id = given_id or message.header(ID) or new_message_id()
        timeout = given_timeout or self.settings.publish_timeout
        streams = self.streams
        assert streams is not None
        if not streams.known(topic):
            await self._look_up(streams, topic, timeout)
        body, headers = self._wire(topic, message, msg_id)
        loop = asyncio.get_running_loop()
        while self.unacked >= self.max_unacked:  # backpressure: wait, never drop
            room = self._room
            if room is None:
                room = self._room = loop.create_future()
            await room
        token = str(next(self._tokens))
        now = loop.time()
        self._unacked[token] = (topic, message, body, headers, msg_id, now, now + timeout, timeout)
        self.unacked += 1
        self.in_flight += 1
        reply = self._ack_prefix + token
        nc = self.nc
        if self._fast:
            fast: FastClient = nc  # type: ignore[assignment]  # _fast says so
            try:
                state = fast.write_publish(topic, body, headers, reply)
            except nats.errors.Error as exc:
                self._unwritten(token)
                raise self.error(topic, message, exc) from exc
            if state == WRITE_DONE:
                return
            if state != WRITE_FALLBACK:
                # Written: whatever happens to this call, its acknowledgement is awaited.
                await fast.kick(state == WRITE_FORCE)
                return
        try:
            await nc.publish(topic, body, reply=reply, headers=headers)
        except nats.errors.Error as exc:
            self._unwritten(token)
            raise self.error(topic, message, exc) from exc

    def _unwritten(self, token: str) -> None:
        """An asynchronous publish raised before it was written: it awaits nothing."""
        if self._unacked.pop(token, None) is not None:
            self._settled()

    def _settled(self) -> None:
        """An asynchronous publish is acknowledged or given up on: its room is free."""
        self.unacked -= 1
        self.in_flight -= 1
        room = self._room
        if room is not None and self.unacked < self.max_unacked:
            self._room = None
            if not room.done():
                room.set_result(None)
        if not self.in_flight and self._idle is not None:
            self._idle.set()

    def _retry(self, entry: _Entry, failure: Exception | None, ack: api.PubAck | None) -> None:
        """Hand an asynchronous publish that was not simply stored to a task of its own."""
        task = asyncio.get_running_loop().create_task(self._finish(entry, failure, ack))
        self._retrying.add(task)
        task.add_done_callback(self._retrying.discard)

    async def _finish(
        self, entry: _Entry, failure: Exception | None, ack: api.PubAck | None
    ) -> None:
        """Send again what ``failure`` calls for, or compare a ``duplicate`` ack, as a
        synchronous publish would; what that gives up on is reported."""
        topic, message, body, headers, msg_id, _, deadline, timeout = entry
        streams = self.streams
        assert streams is not None
        try:
            if ack is None:
                ack = await self._store(
                    streams, topic, message, body, headers, timeout, deadline, failure
                )
            if ack.duplicate:
                await self._check_duplicate(topic, ack.stream, ack.seq, msg_id, body, headers)
        except asyncio.CancelledError:
            self._failed(
                entry,
                "the broker disconnected before JetStream acknowledged it; it may or may not "
                "be stored: publish it again (with the same Micro-ID it is stored once)",
                None,
            )
            raise
        except Exception as exc:
            self._failed(entry, str(exc), exc)
        finally:
            self._settled()

    def _failed(self, entry: _Entry, reason: str, cause: BaseException | None) -> None:
        """An asynchronous publish given up on: to the ``on_error`` hooks, and for flush()."""
        error = UnackedPublish(entry[0], entry[4], entry[1], reason)
        error.__cause__ = cause
        self.failed += 1
        if len(self.failures) < KEPT_FAILURES:
            self.failures.append(error)
        report_error(error, None)

    async def _sweep(self) -> None:
        """Hand publishes whose acknowledgement has not come within RESEND_AFTER to _retry."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(RESEND_AFTER / 4)
            unacked = self._unacked
            if not unacked:
                continue
            late = loop.time() - RESEND_AFTER
            overdue = []
            for token, entry in unacked.items():  # oldest first
                if entry[5] > late:
                    break
                overdue.append(token)
            for token in overdue:
                self._retry(unacked.pop(token), TimeoutError(), None)

    async def flush(self) -> None:
        """Wait until no JetStream publish awaits its acknowledgement; raise what failed.

        :class:`~microbroker_nats.UnackedPublishes` lists the asynchronous
        publishes given up on since the last flush (each was reported to the
        ``on_error`` hooks already). Every publish gives up by its own
        ``publish_timeout``, so this ends.
        """
        await self._until_idle()
        if self.failed:
            failures, count = self.failures, self.failed
            self.failures, self.failed = [], 0
            raise UnackedPublishes(failures, count)

    def close(self) -> None:
        """The broker disconnects: asynchronous publishes still unacknowledged are given up."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        entries = list(self._unacked.values())
        self._unacked.clear()
        for entry in entries:
            self._failed(
                entry,
                "the broker disconnected before JetStream acknowledged it; it may or may not "
                "be stored: publish it again (with the same Micro-ID it is stored once)",
                None,
            )
            self._settled()
        for task in list(self._retrying):
            task.cancel()

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
        first: Exception | None = None,
    ) -> api.PubAck:
        """Send until the server acknowledges, until ``deadline`` (see the module).

        ``first``: how the first send (an asynchronous publish's) failed already.
        """
        loop = asyncio.get_running_loop()
        sends = 0
        silent = 0  # sends in a row that found nobody answering for the stream
        rechecked = False
        maybe_stored = False  # a send may have been stored, its acknowledgement lost
        while True:
            sends += 1
            remaining = deadline - loop.time()
            try:
                if first is not None:
                    failure, first = first, None
                    raise failure
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
        loop = asyncio.get_running_loop()
        future: asyncio.Future[api.PubAck] = loop.create_future()
        acks = self._acks
        acks[token] = future
        reply = self._ack_prefix + token
        # One timer on the future, cheaper than asyncio.wait_for's waiter and callbacks.
        expiry = loop.call_later(wait, _expire, future)
        try:
            nc = self.nc
            if self._fast:
                fast: FastClient = nc  # type: ignore[assignment]  # _fast says so
                state = fast.write_publish(topic, body, headers, reply)
                if state == WRITE_FALLBACK:
                    await nc.publish(topic, body, reply=reply, headers=headers)
                elif state != WRITE_DONE:
                    await fast.kick(state == WRITE_FORCE)
            else:
                await nc.publish(topic, body, reply=reply, headers=headers)
            return await future
        finally:
            expiry.cancel()
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
        if self._unacked:
            entries = list(self._unacked.values())
            self._unacked.clear()
            for entry in entries:
                self._retry(entry, _Lost(), None)

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

    async def _until_idle(self) -> None:
        """Return once no JetStream publish awaits its acknowledgement."""
        while self.in_flight:
            idle = self._idle
            if idle is None:
                idle = self._idle = asyncio.Event()
            idle.clear()  # set when in_flight next comes to 0 (other waiters woken already)
            await idle.wait()

    async def wait_idle(self, timeout: float) -> None:
        """Wait (up to ``timeout`` seconds) for JetStream publishes awaiting their ack."""
        if not self.in_flight:
            return
        try:
            await asyncio.wait_for(self._until_idle(), timeout)
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
        chars = checked_length(headers) if headers else 0
        body = message.body
        # UTF-8 takes at most 4 bytes a character: the exact size only when the bound is over.
        if len(body) + 4 * chars > self.limit:
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
