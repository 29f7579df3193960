"""The Context a typed subscriber receives beside its decoded message."""

from __future__ import annotations

from ._delivery import Delivery
from ._headers import CONTENT_TYPE, ID, Metadata


class Context:
    """What a typed subscriber knows about the message it handles.

    ``metadata`` is the message's headers, read case-insensitively (go-micro
    carries metadata in headers). ``delivery`` is the broker-level delivery,
    for :meth:`ack` / :meth:`nack` when the subscription has ``auto_ack=False``.
    """

    __slots__ = ("_metadata", "delivery")

    def __init__(self, delivery: Delivery) -> None:
        self.delivery = delivery
        self._metadata: Metadata | None = None

    @property
    def topic(self) -> str:
        return self.delivery.topic

    @property
    def metadata(self) -> Metadata:
        metadata = self._metadata
        if metadata is None:
            metadata = self._metadata = Metadata(self.delivery.message.headers)
        return metadata

    @property
    def message_id(self) -> str | None:
        """The ``Micro-Id`` header: unique per published message."""
        return self.delivery.message.header(ID)

    @property
    def content_type(self) -> str | None:
        return self.delivery.message.header(CONTENT_TYPE)

    @property
    def attempt(self) -> int:
        """1 for a first delivery, more for a redelivery."""
        return self.delivery.attempt

    async def ack(self) -> None:
        await self.delivery.ack()

    async def nack(self, *, delay: float | None = None) -> None:
        await self.delivery.nack(delay=delay)

    def __repr__(self) -> str:
        return f"<Context topic={self.topic!r} attempt={self.attempt}>"
