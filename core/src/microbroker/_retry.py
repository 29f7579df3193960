"""Retries and dead letters for a subscription.

A :class:`RetryPolicy` turns a failing handler into a bounded number of
attempts with backoff, then a dead letter: the original message, with its
headers, published on the dead-letter topic (``<topic>.dlq`` by default) with
the error and the number of attempts added. Nothing is dropped silently.

On a broker with acknowledgement (``capabilities.ack``) a failed attempt is a
``nack(delay=backoff)``: the broker redelivers, so the retries survive a crash
of the subscriber. On a broker without it, the attempts are made in-process
(a crash of the subscriber loses them: the documented price of at-most-once).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Final

from ._broker import Broker, Handler
from ._errors import DecodeError
from ._message import Delivery, Message

#: The headers a dead letter carries besides the original ones.
ORIGINAL_TOPIC: Final = "Micro-Original-Topic"
ERROR: Final = "Micro-Error"
ERROR_TYPE: Final = "Micro-Error-Type"
ATTEMPTS: Final = "Micro-Attempts"

_DEFAULT_DLQ: Final = "<topic>.dlq"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often, and how patiently, a failing message is retried before it is dead-lettered.

    :param max_attempts: deliveries in all, the first included (1 = no retry).
    :param backoff: seconds before the second attempt.
    :param multiplier: the backoff grows by this factor with each attempt.
    :param max_backoff: the cap on the backoff.
    :param dead_letter: the dead-letter topic; ``"<topic>"`` in it stands for the
        subscription's topic (default ``"<topic>.dlq"``). ``None`` gives up without
        a dead letter: the error still reaches the ``on_error`` hooks.
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
        delay: float = self.backoff * self.multiplier ** (attempt - 1)
        return min(delay, self.max_backoff)

    def dead_letter_topic(self, topic: str) -> str | None:
        if self.dead_letter is None:
            return None
        return self.dead_letter.replace("<topic>", topic)


def dead_letter_message(delivery: Delivery, error: BaseException) -> Message:
    """The dead letter for ``delivery``: its body and headers, plus why and after how many tries."""
    headers = dict(delivery.message.headers)
    headers[ORIGINAL_TOPIC] = delivery.topic
    headers[ERROR] = _one_line(str(error) or type(error).__name__)
    headers[ERROR_TYPE] = f"{type(error).__module__}.{type(error).__qualname__}"
    headers[ATTEMPTS] = str(delivery.attempt)
    return Message(delivery.message.body, headers)


async def give_up(
    broker: Broker, policy: RetryPolicy, delivery: Delivery, error: BaseException
) -> None:
    """Dead-letter ``delivery`` (when the policy names a topic) and ack it.

    The ack comes only after the dead letter was published: if publishing
    fails, the delivery is nacked instead, so the message is never lost.
    """
    from ._registry import report_error

    topic = policy.dead_letter_topic(delivery.topic)
    if topic is not None:
        try:
            await broker.publish(topic, dead_letter_message(delivery, error))
        except Exception as exc:
            report_error(exc, delivery)
            await delivery.nack(delay=policy.max_backoff)
            return
    await delivery.ack()


def retrying(handler: Handler, broker: Broker, policy: RetryPolicy) -> Handler:
    """Wrap ``handler`` so that its failures follow ``policy``.

    A :class:`~microbroker.DecodeError` is dead-lettered at once: decoding the
    same bytes again cannot succeed.
    """
    from ._registry import report_error

    redelivers = broker.capabilities.ack

    async def retry_handler(delivery: Delivery) -> None:
        while True:
            try:
                await handler(delivery)
                return
            except Exception as exc:
                if delivery.settled:  # the handler settled it itself: its decision stands
                    raise
                report_error(exc, delivery)
                permanent = isinstance(exc, DecodeError)
                if permanent or delivery.attempt >= policy.max_attempts:
                    await give_up(broker, policy, delivery, exc)
                    return
                if redelivers:
                    await delivery.nack(delay=policy.delay(delivery.attempt))
                    return
                # No redelivery from this broker: retry here, counting the attempts ourselves.
                await asyncio.sleep(policy.delay(delivery.attempt))
                delivery.attempt += 1

    return retry_handler


def _one_line(text: str, limit: int = 1000) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
