"""The errors the NATS broker raises, on top of microbroker's own hierarchy."""

from __future__ import annotations

from collections.abc import Sequence

from microbroker import Message, MicrobrokerError, PublishError


class NatsError(MicrobrokerError):
    """Base class of the errors specific to the NATS broker."""


class NatsConnectError(NatsError, ConnectionError):
    """No server in the address list could be reached (wrong address, server down, TLS)."""


class NatsAuthError(NatsConnectError):
    """The server refused the credentials (token, user/password, NKey or credentials file)."""


class NoResponders(NatsError, LookupError):
    """A request found nobody serving its topic."""


class RequestTimeout(NatsError, TimeoutError):
    """A request got no reply in time."""


class StreamError(NatsError):
    """A JetStream stream or consumer could not be created, bound or used as configured."""


class SlowConsumer(NatsError):
    """A subscription's mailbox was full (``max_pending``) when messages arrived for it.

    Reported to the ``on_error`` hooks, at most once a second per subscription,
    with the counts: it is never raised. Core NATS delivers at most once, so
    :attr:`refused` messages were dropped; in JetStream mode they were handed
    back to the server (``-NAK``), which delivers them again (:attr:`redelivered`).
    """

    def __init__(
        self,
        topic: str,
        queue: str | None,
        refused: int,
        total: int,
        capacity: int,
        *,
        redelivered: bool,
    ) -> None:
        #: The subscription's topic (or pattern) and queue group.
        self.topic = topic
        self.queue = queue
        #: Messages refused since the previous report, and since the subscription began.
        self.refused = refused
        self.total = total
        #: The mailbox's capacity (``max_pending``).
        self.capacity = capacity
        #: True in JetStream mode: the refused messages will be delivered again.
        self.redelivered = redelivered
        group = f" (queue {queue!r})" if queue else ""
        fate = (
            "handed back to the server, which delivers them again"
            if redelivered
            else "dropped: core NATS delivers at most once"
        )
        super().__init__(
            f"nats: slow consumer on {topic!r}{group}: {refused} message(s) refused by its "
            f"full mailbox ({capacity} pending, option max_pending), {total} in all, {fate}; "
            "the handler is slower than the messages arrive"
        )


class UnackedPublish(NatsError, PublishError):
    """A JetStream publish made with ``publish_acks="async"`` that JetStream did not acknowledge.

    ``publish()`` had returned: this is reported to the ``on_error`` hooks (with
    no delivery) when the broker gives up on the acknowledgement, and collected
    for :meth:`~microbroker_nats.NatsBroker.flush`. Publishing :attr:`message`
    again on :attr:`topic` is safe: with the same :attr:`message_id` the server
    stores it once.
    """

    def __init__(self, topic: str, message_id: str, message: Message, reason: str) -> None:
        #: The topic the message was published on.
        self.topic = topic
        #: Its ``Nats-Msg-Id`` (the ``Micro-ID`` header, or ``msg_id=``, or one drawn for it).
        self.message_id = message_id
        #: The message as it was published.
        self.message = message
        #: Why: the error the broker gave up with.
        self.reason = reason
        super().__init__(
            f"nats: JetStream did not acknowledge the message {message_id!r} published on "
            f"{topic!r} with publish_acks='async': {reason}"
        )


class UnackedPublishes(NatsError, PublishError):
    """Raised by :meth:`~microbroker_nats.NatsBroker.flush`: publishes JetStream did not store.

    :attr:`failures` holds each one (an :class:`UnackedPublish`, already
    reported to the ``on_error`` hooks), the first 1,000 of :attr:`count`.
    """

    def __init__(self, failures: Sequence[UnackedPublish], count: int) -> None:
        #: The publishes not acknowledged since the last flush (at most the first 1,000).
        self.failures = list(failures)
        #: How many there were.
        self.count = count
        first = failures[0]
        super().__init__(
            f"nats: {count} publish(es) made with publish_acks='async' were not acknowledged "
            f"by JetStream since the last flush; the first: {first.message_id!r} on "
            f"{first.topic!r}: {first.reason}"
        )


__all__ = [
    "NatsAuthError",
    "NatsConnectError",
    "NatsError",
    "NoResponders",
    "PublishError",
    "RequestTimeout",
    "SlowConsumer",
    "StreamError",
    "UnackedPublish",
    "UnackedPublishes",
]
