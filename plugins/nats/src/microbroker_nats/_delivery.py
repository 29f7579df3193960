"""Deliveries from NATS: core NATS (settled locally) and JetStream (settled with the server)."""

from __future__ import annotations

import logging

import nats.errors
from nats.aio.client import Client as NATS

from microbroker import Message, NotConnected, PublishError
from microbroker.transport import CONTENT_TYPE, Delivery

from ._client import WRITE_DONE, WRITE_FALLBACK, WRITE_FORCE, FastClient, Headers
from ._client import parse_header_lines as _parse_header_lines

logger = logging.getLogger("microbroker.broker.nats")

_CONTENT_TYPE_LINE = b"\r\nContent-Type:"
_STATUS_LINE = len(b"NATS/1.0\r\n")
# Content-Type values as they come off the wire (with any spaces) -> the decoded value.
_content_types: dict[bytes, str] = {}
_CONTENT_TYPES_KEPT = 64

# What a JetStream consumer is told (the payload of a message to the ack subject).
ACK = b"+ACK"
NAK = b"-NAK"
TERM = b"+TERM"


def nak(delay: float) -> bytes:
    """``-NAK``, with ``delay`` seconds before the server delivers the message again."""
    if delay <= 0:
        return NAK
    return b'-NAK {"delay": %d}' % int(delay * 1e9)


class NatsDelivery(Delivery):
    """A delivery from NATS. It knows the request's reply subject, if any, and can answer it.

    Headers that arrive as a raw NATS header block are parsed the first time
    :attr:`message` is read: a typed subscriber that never reads its metadata
    only pays for finding ``Content-Type``. Core NATS has no acknowledgement:
    settling it only records the outcome.
    """

    # ``body`` is a plain attribute here (Delivery's is a property): read once per message.
    __slots__ = ("_nc", "_raw_headers", "_reply", "body")

    acks_locally = True

    def __init__(
        self,
        topic: str,
        body: bytes,
        headers: Headers,
        queue: str | None,
        reply: str,
        nc: NATS,
        attempt: int = 1,
    ) -> None:
        """``headers``: a dict, ``None``, or the raw NATS header block (parsed when read)."""
        if type(headers) is dict:
            Delivery.__init__(self, topic, Message(body, headers), queue=queue, attempt=attempt)
            self._raw_headers: bytes | None = None
        else:
            Delivery.__init__(self, topic, None, queue=queue, attempt=attempt)
            self._raw_headers = headers  # type: ignore[assignment]  # bytes or None
        self.body = body  # type: ignore[misc]  # a slot here, a property in Delivery
        self._reply = reply
        self._nc = nc

    def load_message(self) -> Message:
        raw = self._raw_headers
        return Message(self.body, _parse_header_lines(raw[_STATUS_LINE:]) if raw else {})

    @property
    def message(self) -> Message:
        """The message: the body and its headers (parsed on first read)."""
        return super().message

    @message.setter
    def message(self, message: Message) -> None:
        # A hook may replace the message (decrypted, say): the body attribute follows it.
        Delivery.message.fset(self, message)  # type: ignore[attr-defined]
        self.body = message.body  # type: ignore[misc]
        self._raw_headers = None

    @property
    def content_type(self) -> str | None:
        raw = self._raw_headers
        if raw is None:
            return self.message.header(CONTENT_TYPE)
        # Every header line follows a CRLF (the block starts with "NATS/1.0\r\n");
        # the last of several wins, as when the block is parsed. Two partitions: each
        # call into C costs about as much as the search it makes.
        _, found, rest = raw.rpartition(_CONTENT_TYPE_LINE)
        if not found:
            return self.message.header(CONTENT_TYPE)  # absent, or spelt in another case
        value = rest.partition(b"\r\n")[0]
        text = _content_types.get(value)
        if text is None:
            text = value.strip().decode("utf-8", "replace")
            if len(_content_types) < _CONTENT_TYPES_KEPT:
                _content_types[value] = text
        return text

    @property
    def reply_to(self) -> str | None:
        """The subject a request expects its reply on, or ``None`` for a plain publish."""
        return self._reply or None

    async def respond(self, message: Message) -> None:
        """Send ``message`` as the reply to this request (see :meth:`NatsBroker.request`)."""
        reply = self._reply
        if not reply:
            raise PublishError(
                f"the message on {self.topic!r} is not a request: it has no reply subject"
            )
        nc = self._nc
        body = message.body
        headers = message.headers or None
        try:
            if type(nc) is FastClient:
                state = nc.write_publish(reply, body, headers, once=True)
                if state == WRITE_DONE:
                    return
                if state != WRITE_FALLBACK:
                    await nc.kick(state == WRITE_FORCE)
                    return
            await nc.publish(reply, body, headers=headers)
        except (nats.errors.ConnectionClosedError, nats.errors.ConnectionDrainingError) as exc:
            raise NotConnected(f"cannot reply on {self.topic!r}: the connection is closed") from exc


class JetStreamDelivery(NatsDelivery):
    """A JetStream delivery: ack, nack and give-up go to the server through the ack subject.

    ``on_ack`` sends ``+ACK``, ``on_nack(delay)`` ``-NAK`` with the delay the
    subscription's retry policy chose, and ``on_reject`` (given up, after the
    dead letter was published) ``+TERM``: the server never delivers it again.
    """

    __slots__ = ()

    acks_locally = False

    @property
    def reply_to(self) -> str | None:
        return None  # the reply subject of a JetStream message is its ack subject

    async def respond(self, message: Message) -> None:
        raise PublishError(f"the JetStream message on {self.topic!r} is not a request")

    async def on_ack(self) -> None:
        # Not delivered again after ack_wait, if this is lost: a duplicate, never a loss.
        await self._tell(ACK, "ack", "it will be delivered again after ack_wait")

    async def on_nack(self, delay: float) -> None:
        await self._tell(nak(delay), "nack", "it will be delivered again after ack_wait")

    async def on_reject(self) -> None:
        await self._tell(
            TERM, "terminate", "the server will deliver it again after ack_wait (a duplicate)"
        )

    async def _tell(self, payload: bytes, what: str, consequence: str) -> None:
        nc = self._nc
        try:
            if type(nc) is FastClient:
                state = nc.write_publish(self._reply, payload, None)
                if state == WRITE_DONE:
                    return
                if state != WRITE_FALLBACK:
                    await nc.kick(state == WRITE_FORCE)
                    return
            await nc.publish(self._reply, payload)
        except nats.errors.Error as exc:
            logger.warning(
                "nats: could not %s a message on %r (%s): %s", what, self.topic, exc, consequence
            )


def ack_tokens(reply: str) -> tuple[int, int]:
    """``(deliveries, stream sequence)`` from a JetStream ack subject (old and domain forms).

    ``$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>``,
    or with ``<domain>.<account hash>`` after ``ACK`` and a token at the end.
    """
    tokens = reply.split(".")
    at = 4 if len(tokens) == 9 else 6
    try:
        return int(tokens[at]), int(tokens[at + 1])
    except (IndexError, ValueError):
        return 1, 0
