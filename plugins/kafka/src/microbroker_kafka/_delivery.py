"""A delivery from a Kafka partition: its settlement moves the partition's commit, or not."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from microbroker import Message
from microbroker.transport import CONTENT_TYPE, Delivery

from ._offsets import Partition

if TYPE_CHECKING:
    from ._subscriber import KafkaSubscriber

RecordHeaders = Sequence[tuple[str, bytes]]
"""A Kafka record's headers as aiokafka reads them: ``(name, value)`` pairs."""

_CONTENT_TYPE = CONTENT_TYPE.casefold()
_CONTENT_TYPE_LENGTH = len(_CONTENT_TYPE)
_CONTENT_TYPES: dict[bytes, str] = {}
"""Content types as received, decoded: a typed subscriber reads one per delivery."""


_init = Delivery.__init__


class KafkaDelivery(Delivery):
    """A delivery from a Kafka partition.

    - ``ack`` settles its offset: the group's commit may move past it (the
      partition's tracker reads the delivery's state: nothing to call on ack);
    - ``nack`` (a failed attempt) delivers it again after the retry policy's
      backoff while the partition goes on; its offset stays outstanding, so no
      commit passes it meanwhile;
    - given up (the policy's last attempt failed; its dead letter published),
      it is settled like an ack, so that the commit moves past a poison record.

    The record's headers become the message's dict the first time
    :attr:`message` is read: a typed subscriber that never reads its metadata
    only looks for ``Content-Type``.
    """

    __slots__ = (
        "_again",
        "_body",
        "_given_up",
        "_raw_headers",
        "_sub",
        "_tracker",
        "key",
        "offset",
        "partition",
    )

    #: An ack is the delivery's state alone: the partition's tracker reads it (``Partition.safe``).
    acks_locally = True

    def __init__(
        self,
        topic: str,
        body: bytes,
        headers: RecordHeaders | None,
        message: Message | None,
        queue: str | None,
        attempt: int,
        sub: KafkaSubscriber,
        tracker: Partition,
        partition: int,
        offset: int,
        key: bytes | None,
    ) -> None:
        """Either the record's ``headers`` (parsed lazily) or a ready ``message``."""
        _init(self, topic, message, queue=queue, attempt=attempt)  # once per record: no super()
        self._body = body
        self._raw_headers = headers
        self._sub = sub
        self._tracker = tracker
        #: The partition and offset of the record, and its key (``None`` without one).
        self.partition = partition
        self.offset = offset
        self.key = key
        #: Its redelivery, once made (after a nack): the offset is settled as that one is.
        self._again: KafkaDelivery | None = None
        #: Given up, its dead letter (if any) published: settled like an ack.
        self._given_up = False

    def load_message(self) -> Message:
        raw = self._raw_headers
        return Message(
            self._body,
            {name: value.decode("utf-8", "replace") for name, value in raw} if raw else {},
        )

    @property
    def body(self) -> bytes:
        message = self._message
        return self._body if message is None else message.body

    @property
    def content_type(self) -> str | None:
        if self._message is None:
            found = None
            for name, value in self._raw_headers or ():
                # An ASCII name folds to one of the same length: others are passed over unfolded.
                if name == CONTENT_TYPE or (
                    (len(name) == _CONTENT_TYPE_LENGTH or not name.isascii())
                    and name.casefold() == _CONTENT_TYPE
                ):
                    found = value  # the last one wins, as in the dict
            if found is None:
                return None
            text = _CONTENT_TYPES.get(found)
            if text is None:
                text = found.decode("utf-8", "replace")
                if len(_CONTENT_TYPES) < 64:  # from the wire: bounded
                    _CONTENT_TYPES[found] = text
            return text
        return self._message.header(CONTENT_TYPE)

    def redelivery(self) -> KafkaDelivery:
        """The record's next attempt (after a nack): its offset is settled as that one is."""
        message = self.message
        again = self._again = KafkaDelivery(
            self.topic,
            message.body,
            None,
            Message(message.body, dict(message.headers)),
            self.queue,
            self.attempt + 1,
            self._sub,
            self._tracker,
            self.partition,
            self.offset,
            self.key,
        )
        return again

    async def on_nack(self, delay: float) -> None:
        self._sub.redeliver(self, delay)

    async def on_reject(self) -> None:
        # Given up: never delivered again, so the commit may move past it.
        self._given_up = True
