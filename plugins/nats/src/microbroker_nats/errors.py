"""The errors the NATS broker raises, on top of microbroker's own hierarchy."""

from __future__ import annotations

from microbroker import MicrobrokerError, PublishError


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


__all__ = [
    "NatsAuthError",
    "NatsConnectError",
    "NatsError",
    "NoResponders",
    "PublishError",
    "RequestTimeout",
    "SlowConsumer",
    "StreamError",
]
