"""Deliveries and how they are settled: the part of the delivery contract every broker shares.

A transport subclasses :class:`Delivery` and overrides the three transport
hooks :meth:`~Delivery.on_ack`, :meth:`~Delivery.on_nack` and
:meth:`~Delivery.on_reject`; everything else (the settlement state, the
redelivery policy, giving up and dead-lettering, reporting) happens here, the
same way for every broker.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from typing import ClassVar

from ._errors import DecodeError, GivenUp
from ._headers import (
    ATTEMPTS,
    CONTENT_TYPE,
    ERROR,
    ERROR_TYPE,
    ID,
    ORIGINAL_ID,
    ORIGINAL_TOPIC,
    new_message_id,
    one_line,
)
from ._message import Message
from ._plugins import report_error
from ._retry import RetryPolicy

Publish = Callable[[str, Message], Awaitable[None]]


class Settlement(enum.IntEnum):
    """Where a delivery stands. The first settlement decides; later calls change nothing."""

    PENDING = 0
    """Not settled yet: the handler is running, or left it for later (``auto_ack=False``)."""
    ACKED = 1
    """Processed: it will not be delivered again."""
    NACKED = 2
    """Handed back: the broker delivers it again after a backoff (where it can redeliver)."""
    REJECTED = 3
    """Given up: dead-lettered or dropped, never delivered again."""


_PENDING, _ACKED, _NACKED, _REJECTED = 0, 1, 2, 3


class Delivery:
    """One message delivered to a subscription: go-micro's ``broker.Event``.

    A handler settles a delivery with :meth:`ack`, :meth:`nack` or
    :meth:`reject`. With ``auto_ack=True`` (the default) the broker acks after
    the handler returns; a handler that raises is a failed attempt, under the
    subscription's :class:`~microbroker.RetryPolicy` (redelivered with backoff,
    then given up). Settling is idempotent: the first call decides.

    **For transports.** Subclass it and override the transport hooks
    :meth:`on_ack`, :meth:`on_nack` and :meth:`on_reject`; each runs at most
    once, after the state is recorded. To parse headers lazily, pass
    ``message=None`` and override :meth:`load_message`, and override
    :attr:`body` and :attr:`content_type` where the transport can answer them
    without building the whole :class:`Message`.
    """

    __slots__ = ("_contract", "_message", "_state", "attempt", "queue", "topic")

    #: True when :meth:`on_ack` does nothing (the transport has nothing to tell on
    #: ack): the dispatcher then records an auto-ack without awaiting :meth:`ack`,
    #: one coroutine less per message. A subclass whose ``on_ack`` does work leaves it False.
    acks_locally: ClassVar[bool] = False

    def __init__(
        self,
        topic: str,
        message: Message | None = None,
        *,
        queue: str | None = None,
        attempt: int = 1,
    ) -> None:
        #: The topic the message was published on (concrete, for a wildcard subscription).
        self.topic = topic
        self._message = message
        #: The queue group this delivery was made to, or ``None`` for a broadcast subscription.
        self.queue = queue
        #: 1 for the first delivery of the message to this subscription, 2 for the first
        #: redelivery...
        self.attempt = attempt
        self._state = _PENDING
        self._contract: _Contract | None = None

    # The message ------------------------------------------------------------------

    @property
    def message(self) -> Message:
        """The message: headers and body (built by :meth:`load_message` on first read)."""
        message = self._message
        if message is None:
            message = self._message = self.load_message()
        return message

    @message.setter
    def message(self, message: Message) -> None:
        self._message = message

    def load_message(self) -> Message:
        """Build the message of a delivery made with ``message=None``: a transport overrides it."""
        raise TypeError(
            f"{type(self).__name__} was made without a message: it must override load_message()"
        )

    @property
    def body(self) -> bytes:
        """The message's body (``delivery.message.body``)."""
        return self.message.body

    @property
    def content_type(self) -> str | None:
        """The message's ``Content-Type`` header, or ``None``."""
        return self.message.header(CONTENT_TYPE)

    def header(self, name: str, default: str | None = None) -> str | None:
        """The value of header ``name``, compared case-insensitively."""
        return self.message.header(name, default)

    # Settlement ---------------------------------------------------------------------

    @property
    def state(self) -> Settlement:
        """Where the delivery stands (:class:`Settlement`)."""
        return Settlement(self._state)

    @property
    def settled(self) -> bool:
        """Whether it was acked, nacked or rejected."""
        return self._state != _PENDING

    @property
    def acked(self) -> bool:
        return self._state == _ACKED

    @property
    def nacked(self) -> bool:
        return self._state == _NACKED

    @property
    def rejected(self) -> bool:
        """Whether it was given up (dead-lettered or dropped)."""
        return self._state == _REJECTED

    async def ack(self) -> None:
        """Confirm the message was processed; it will not be delivered again."""
        if self._state == _PENDING:
            self._state = _ACKED
            await self.on_ack()

    async def nack(self, *, delay: float | None = None) -> None:
        """Hand the message back so that the broker delivers it again.

        ``delay`` (seconds) asks for a pause before the redelivery where the
        broker supports one; ``None`` waits as the subscription's retry policy
        says. A nack of the last attempt the policy allows gives the message up
        instead (see :meth:`reject`). On a broker without acknowledgement
        (``capabilities.ack`` false) a nack is accepted and changes nothing.
        """
        if self._state != _PENDING:
            return
        contract = self._contract
        if contract is None:
            self._state = _NACKED
            await self.on_nack(0.0 if delay is None else max(0.0, float(delay)))
            return
        await contract.nacked(self, delay)

    async def reject(self) -> None:
        """Give the message up: it is never delivered again.

        It is dead-lettered first when the subscription's retry policy names a
        dead-letter topic (with ``Micro-Error: rejected``).
        """
        if self._state != _PENDING:
            return
        contract = self._contract
        if contract is None:
            self._state = _REJECTED
            await self.on_reject()
            return
        await contract.give_up(self, None, report=False)

    async def release(self) -> None:
        """Hand the message back undelivered, at once and without counting a failure.

        For a subscription that stops before it could handle the message (a
        server shutting down): the broker delivers it again, here or to
        another member of its group. It never gives the message up.
        """
        if self._state == _PENDING:
            self._state = _NACKED
            await self.on_release()

    # Transport hooks: a broker overrides these. -------------------------------------

    async def on_ack(self) -> None:
        """Tell the transport the message was processed. Runs once, on the first ack."""

    async def on_nack(self, delay: float) -> None:
        """Tell the transport to deliver the message again after ``delay`` seconds.

        Runs once, on the first nack. The delay already follows the
        subscription's retry policy (or the handler's explicit ``delay``). A
        transport without redelivery leaves it as it is (a no-op).
        """

    async def on_release(self) -> None:
        """Hand the message back at once, as not delivered (:meth:`release`).

        By default ``on_nack(0.0)``. A transport that counts attempts itself
        overrides it to hand the message back without counting one.
        """
        await self.on_nack(0.0)

    async def on_reject(self) -> None:
        """Tell the transport never to deliver the message again.

        Runs once, when the message is given up, after its dead letter (if any)
        was published. By default the same as :meth:`on_ack`: the transport
        forgets the message. A transport with a way to say "given up" (JetStream's
        ``+TERM``, AMQP's reject) overrides it.
        """
        await self.on_ack()

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} topic={self.topic!r} queue={self.queue!r} "
            f"attempt={self.attempt} state={Settlement(self._state).name.lower()}>"
        )


class _Contract:
    """The redelivery terms of one subscription, shared by its deliveries.

    Made by ``Broker.subscribe``; a transport never sees it.
    """

    __slots__ = ("in_process", "max_attempts", "policy", "publish", "redelivers")

    def __init__(
        self, publish: Publish, policy: RetryPolicy, *, redelivers: bool, explicit: bool
    ) -> None:
        #: The broker's publish, for the dead letters.
        self.publish = publish
        self.policy = policy
        self.max_attempts = policy.max_attempts
        #: The broker delivers a nacked message again (``capabilities.ack``).
        self.redelivers = redelivers
        #: Failed attempts are retried in this process: a broker that cannot redeliver,
        #: and a subscription that asked for retries.
        self.in_process = not self.redelivers and explicit and policy.max_attempts > 1

    async def failed(self, delivery: Delivery, error: BaseException) -> None:
        """A handler failed on ``delivery`` (already reported): redeliver, or give up."""
        if (
            not self.redelivers
            or delivery.attempt >= self.max_attempts
            or isinstance(error, DecodeError)  # decoding the same bytes again cannot succeed
        ):
            await self.give_up(delivery, error)
            return
        delivery._state = _NACKED
        await delivery.on_nack(self.policy.delay(delivery.attempt))

    async def nacked(self, delivery: Delivery, delay: float | None) -> None:
        if self.redelivers and delivery.attempt >= self.max_attempts:
            await self.give_up(delivery, None)
            return
        delivery._state = _NACKED
        await delivery.on_nack(
            self.policy.delay(delivery.attempt) if delay is None else max(0.0, float(delay))
        )

    async def give_up(
        self, delivery: Delivery, error: BaseException | None, *, report: bool = True
    ) -> None:
        """Dead-letter ``delivery`` (where the policy names a topic), then reject it.

        The dead letter is published before the original is rejected, so that
        a crash in between means a redelivery, never a loss. A dead letter
        that cannot be published is reported, and the message rejected anyway:
        a poison message must never block its subscription. The ``on_error``
        hooks hear of every give-up, with the delivery (its whole message).
        """
        delivery._state = _REJECTED
        intended = self.policy.dead_letter_topic(delivery.topic)
        dead_letter: str | None = None
        failure: Exception | None = None
        if intended is not None:
            try:
                await self.publish(intended, dead_letter_message(delivery, error))
                dead_letter = intended
            except Exception as exc:
                failure = exc
        try:
            await delivery.on_reject()
        finally:
            if report or failure is not None:
                report_error(
                    GivenUp(
                        topic=delivery.topic,
                        attempts=delivery.attempt,
                        dead_letter=dead_letter,
                        cause=error,
                        failure=failure,
                        intended=intended,
                    ),
                    delivery,
                )


def dead_letter_message(delivery: Delivery, error: BaseException | None) -> Message:
    """The dead letter of ``delivery``: its body and headers, plus why and after how many tries.

    It has a ``Micro-ID`` of its own (a broker that de-duplicates by id, as
    JetStream does, would otherwise take it for the original and drop it); the
    original's id travels in ``Micro-Original-ID``.
    """
    original = delivery.message
    headers: dict[str, str] = {}
    original_id = None
    folded_id = ID.casefold()
    for name, value in original.headers.items():
        if name.casefold() == folded_id:
            original_id = value
        else:
            headers[name] = value
    headers[ID] = new_message_id()
    if original_id is not None:
        headers[ORIGINAL_ID] = original_id
    headers[ORIGINAL_TOPIC] = delivery.topic
    if error is not None:
        headers[ERROR] = one_line(str(error) or type(error).__name__)
        headers[ERROR_TYPE] = f"{type(error).__module__}.{type(error).__qualname__}"
    else:
        headers[ERROR] = "rejected"
    headers[ATTEMPTS] = str(delivery.attempt)
    return Message(original.body, headers)
