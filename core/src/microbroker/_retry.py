"""The redelivery policy every subscription has: one backoff formula, one give-up rule.

A :class:`RetryPolicy` says how often a failing message is delivered again and
how long to wait in between; when the attempts are used up the message is
*given up*: published whole on the dead-letter topic (``<topic>.dlq`` by
default) with why and after how many attempts, and rejected on the transport
so that it is never delivered again (see ``_delivery``). Every subscription has a policy, the
default one (:data:`DEFAULT_RETRY`) unless it names its own: a poison message
never loops for ever.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

_DEFAULT_DLQ: Final = "<topic>.dlq"


def backoff(attempt: int, base: float, multiplier: float = 2.0, cap: float = 30.0) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1-based).

    ``base * multiplier ** (attempt - 1)``, at most ``cap``.

    The one backoff formula of the core and of every transport: redeliveries,
    reconnects and retried deliveries all wait by it.
    """
    if attempt < 1:
        attempt = 1
    try:
        delay = base * multiplier ** (attempt - 1)
    except OverflowError:
        return cap
    return delay if delay < cap else cap


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often, and how patiently, a failing message is delivered again before it is given up.

    :param max_attempts: deliveries in all, the first included (1 = no retry).
    :param backoff: seconds before the second attempt.
    :param multiplier: the wait grows by this factor with each attempt.
    :param max_backoff: the cap on the wait.
    :param dead_letter: the dead-letter topic; ``"<topic>"`` in it stands for the
        topic the message was delivered on (default ``"<topic>.dlq"``). ``None``
        gives up without a dead letter: the message is rejected, and the
        ``on_error`` hooks still hear of it.

    On a broker with acknowledgement (``capabilities.ack``) a failed attempt is
    a ``nack`` with the backoff as its delay: the broker redelivers, so the
    retries survive a crash of the subscriber. On a broker without it, the
    attempts of a subscription that names its own policy are made in-process
    (a crash of the subscriber loses them: the documented price of at most
    once), and the default policy gives up at the first failure.
    """

    max_attempts: int = 5
    backoff: float = 0.1
    multiplier: float = 2.0
    max_backoff: float = 30.0
    dead_letter: str | None = _DEFAULT_DLQ

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.backoff < 0 or self.max_backoff < 0 or self.multiplier < 1:
            raise ValueError("backoff and max_backoff must be >= 0 and multiplier >= 1")

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        return backoff(attempt, self.backoff, self.multiplier, self.max_backoff)

    def dead_letter_topic(self, topic: str) -> str | None:
        """The dead-letter topic for a message delivered on ``topic`` (``None``: no dead letter)."""
        if self.dead_letter is None:
            return None
        return self.dead_letter.replace("<topic>", topic)


DEFAULT_RETRY: Final = RetryPolicy()
"""The policy of a subscription that names none: 5 deliveries, then ``<topic>.dlq``."""
