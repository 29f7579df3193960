"""A RabbitMQ delivery: headers read lazily, the attempt counted, and how it is settled.

- ``ack``: ``basic.ack``.
- ``nack(delay)``: a copy goes back to the subscription's own queue, after
  ``delay`` through a delay queue (see ``_topology``), with its attempt
  counted in ``x-microbroker-attempt``; once the server confirmed the copy the
  original is acked. A crash in between makes a duplicate, never a loss; a
  copy that cannot be published falls back to ``basic.nack`` with requeue.
- ``reject`` (given up; the core already published the dead letter):
  ``basic.reject`` without requeue. The queues have no dead-letter exchange, so
  the server drops it: a second dead letter would only duplicate the core's.

The attempt: ``x-microbroker-attempt`` (1 when absent), plus the server's
count of redeliveries since that copy was published: a quorum queue's
``x-delivery-count``; on a classic queue, which only says ``redelivered``, one
more when it is set (a consumer that died with the message, or a
subscription that handed it back on closing).
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

import aiormq.abc

from microbroker.transport import Delivery, Message, report_error

from ._publishing import Properties, decode_framed
from ._topology import ATTEMPT, DELAY, FRAMED, SERVER_HEADERS, TOPIC

if TYPE_CHECKING:
    from ._subscribing import RabbitMQSubscriber

_HIDDEN = frozenset((ATTEMPT, TOPIC, DELAY, FRAMED, *SERVER_HEADERS))


def attempt_of(raw: aiormq.abc.DeliveredMessage, headers: dict[str, Any] | None) -> int:
    """Which delivery of the message this is (1 for the first)."""
    attempt = 1
    if headers:
        counted = headers.get(ATTEMPT)
        if counted is not None:
            attempt = int(counted)
        redeliveries = headers.get("x-delivery-count")
        if redeliveries is not None:
            return attempt + int(redeliveries)
    delivery = raw.delivery
    if getattr(delivery, "redelivered", False):
        attempt += 1
    return attempt


def user_headers(headers: dict[str, Any] | None) -> dict[str, str]:
    """The message's headers as the publisher gave them: strings, microbroker's own taken off."""
    if not headers:
        return {}
    out: dict[str, str] = {}
    for name, value in headers.items():
        if name in _HIDDEN:
            continue
        if type(value) is not str:
            # Another AMQP client's header (a number, a table): its text, never dropped.
            value = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
        out[name] = value
    return out


class RabbitMQDelivery(Delivery):
    """One AMQP delivery to a subscription."""

    __slots__ = ("_body", "_raw", "_sub")

    def __init__(
        self,
        topic: str,
        raw: aiormq.abc.DeliveredMessage,
        subscriber: RabbitMQSubscriber,
        attempt: int,
    ) -> None:
        super().__init__(topic, None, queue=subscriber.queue, attempt=attempt)
        self._raw = raw
        self._sub = subscriber
        self._body: bytes | None = None

    @property
    def raw(self) -> aiormq.abc.DeliveredMessage:
        """The aiormq delivery (its properties, delivery tag and channel)."""
        return self._raw

    def load_message(self) -> Message:
        headers = self._raw.header.properties.headers
        if headers and FRAMED in headers:
            framed, body = decode_framed(self._raw.body)
            self._body = body
            return Message(body, framed)
        return Message(self._raw.body, user_headers(headers))

    @property
    def body(self) -> bytes:
        if self._message is not None:
            return self._message.body
        headers = self._raw.header.properties.headers
        if headers and FRAMED in headers:
            return self.message.body
        return self._raw.body

    @property
    def content_type(self) -> str | None:
        headers = self._raw.header.properties.headers
        if not headers or FRAMED in headers:
            return self.message.header("Content-Type")
        value = headers.get("Content-Type")
        if value is not None:
            return str(value)
        return self.message.header("Content-Type")

    # Settlement -----------------------------------------------------------------------

    # The settle coroutine itself, one frame less per message than an ``async def``.
    def on_ack(self) -> Coroutine[Any, Any, None]:
        return self._sub.settle(self._raw, "ack")

    def on_reject(self) -> Coroutine[Any, Any, None]:
        return self._sub.settle(self._raw, "reject")

    async def on_nack(self, delay: float) -> None:
        sub = self._sub
        raw = self._raw
        properties = raw.header.properties
        headers = dict(properties.headers or {})
        for name in SERVER_HEADERS:
            headers.pop(name, None)
        headers.pop(DELAY, None)
        headers[ATTEMPT] = str(self.attempt + 1)
        headers[TOPIC] = self.topic
        copy = Properties(
            headers=headers,
            delivery_mode=properties.delivery_mode,
            content_type=properties.content_type,
            message_id=properties.message_id,
            correlation_id=properties.correlation_id,
            reply_to=properties.reply_to,
            priority=properties.priority,
            timestamp=properties.timestamp,
            message_type=properties.message_type,
            app_id=properties.app_id,
        )
        try:
            await sub.redeliver(raw.body, copy, delay)
        except Exception as exc:
            report_error(exc, self)
            # The copy may not have reached the server: hand the original back instead.
            await sub.settle(raw, "requeue")
            return
        await sub.settle(raw, "ack")
