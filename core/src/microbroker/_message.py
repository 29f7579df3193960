"""Broker-level values: Message (headers plus raw bytes) and Delivery (go-micro's broker.Event)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar


@dataclass(slots=True)
class Message:
    """A broker message: string headers and a raw byte body, as go-micro's ``broker.Message``.

    Header names are kept as given; :meth:`header` reads them case-insensitively,
    because transports and HTTP proxies do not all keep the case of a name.
    """

    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    def header(self, name: str, default: str | None = None) -> str | None:
        """Return the value of header ``name``, compared case-insensitively."""
        headers = self.headers
        value = headers.get(name)
        if value is not None:
            return value
        folded = name.casefold()
        for key, value in headers.items():
            if key.casefold() == folded:
                return value
        return default


class Delivery:
    """One message delivered to a subscription: go-micro's ``broker.Event``.

    A handler settles a delivery with :meth:`ack` or :meth:`nack`. With
    ``auto_ack=True`` (the default) the broker acks after the handler returns
    and nacks when it raises. Settling is idempotent: the first call decides
    and later calls do nothing. On a broker without acknowledgement
    (``capabilities.ack`` false) both calls are accepted and do nothing.

    Brokers subclass this and override :meth:`_settle_ack` and :meth:`_settle_nack`.
    """

    __slots__ = ("_state", "attempt", "message", "queue", "topic")

    #: True when :meth:`ack` only records the outcome (nothing to tell the
    #: transport): the broker's dispatch then records it without awaiting ack().
    #: A subclass whose ack does more must leave it False.
    acks_locally: ClassVar[bool] = False

    def __init__(
        self, topic: str, message: Message, *, queue: str | None = None, attempt: int = 1
    ) -> None:
        self.topic = topic
        self.message = message
        #: The queue group this delivery was made to, or ``None`` for a broadcast subscription.
        self.queue = queue
        #: 1 for the first delivery to this subscription, 2 for the first redelivery...
        self.attempt = attempt
        self._state = 0  # 0 pending, 1 acked, 2 nacked

    @property
    def body(self) -> bytes:
        """The message's body (``delivery.message.body``)."""
        return self.message.body

    @property
    def content_type(self) -> str | None:
        """The message's ``Content-Type`` header, or ``None``.

        A broker may answer this without parsing every header (see the nats broker).
        """
        return self.message.header("Content-Type")

    @property
    def settled(self) -> bool:
        """Whether :meth:`ack` or :meth:`nack` has been called."""
        return self._state != 0

    @property
    def acked(self) -> bool:
        """Whether the delivery was acked."""
        return self._state == 1

    @property
    def nacked(self) -> bool:
        """Whether the delivery was nacked."""
        return self._state == 2

    async def ack(self) -> None:
        """Confirm the message was processed; it will not be delivered again."""
        if self._state == 0:
            self._state = 1
            await self._settle_ack()

    async def nack(self, *, delay: float | None = None) -> None:
        """Reject the message so that the broker delivers it again.

        ``delay`` (seconds) asks for a pause before redelivery where the broker
        supports one; ``None`` uses the broker's own backoff.
        """
        if self._state == 0:
            self._state = 2
            await self._settle_nack(delay)

    async def _settle_ack(self) -> None:
        """Tell the transport the message was acked. Brokers override this."""

    async def _settle_nack(self, delay: float | None) -> None:
        """Tell the transport the message was nacked. Brokers override this."""

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} topic={self.topic!r} queue={self.queue!r} "
            f"attempt={self.attempt} body={len(self.message.body)} bytes>"
        )
