"""What the broker declares on the server: exchanges, queues, bindings and delay queues.

The shape is go-micro's: one topic exchange (``micro`` by default) that every
topic is published to with the topic as routing key; a subscription binds a
queue to it with the topic (or an AMQP pattern: ``*`` one word, ``#`` any
number of words) as binding key.

- a queue group's queue is named by ``queue_name`` (``{topic}:{queue}``), durable
  (``durable_queues``), classic or quorum (``queue_type``): its members consume
  from it in turn, and what arrives while none is there waits for them;
- a broadcast subscription's queue is the server's (``amq.gen-...``), exclusive to
  its connection and deleted with it;
- a redelivery after a delay goes through a delay queue of that delay: the
  headers exchange ``<exchange>.delay`` routes it (by the ``microbroker-delay``
  header) to ``<exchange>.delay.<ms>``, whose messages expire after ``<ms>`` and
  are dead-lettered to the default exchange under their routing key, the name
  of the queue they came from, straight back to it. Durable, and a republish
  is confirmed before the original is acked: a consumer that crashes in between
  causes a duplicate, never a loss. An unused delay queue deletes itself.
"""

from __future__ import annotations

import time
from typing import Any

import aiormq.abc

from .options import RabbitMQOptions

#: Headers of microbroker's own on the wire, taken off before a handler sees the message.
ATTEMPT = "x-microbroker-attempt"
"""The attempt a republished message is at (absent: the first)."""
TOPIC = "x-microbroker-topic"
"""The topic a republished message was first published on (its routing key is a queue's)."""
DELAY = "microbroker-delay"
"""Milliseconds of the delay queue a redelivery waits in (routes it in the delay exchange,
which ignores the headers whose names start ``x-``)."""
FRAMED = "x-microbroker-framed"
"""The headers travel at the front of the body: too large for one AMQP frame."""

#: Headers RabbitMQ adds when it dead-letters a message (our delay queues do).
SERVER_HEADERS = ("x-death", "x-first-death-exchange", "x-first-death-queue",
                  "x-first-death-reason", "x-last-death-exchange", "x-last-death-queue",
                  "x-last-death-reason", "x-delivery-count")  # fmt: skip

#: Longest AMQP short string: exchange and queue names, routing keys, header names.
SHORTSTR = 255


def delay_exchange(options: RabbitMQOptions) -> str:
    return f"{options.exchange}.delay"


def delay_queue(options: RabbitMQOptions, ms: int) -> str:
    return f"{options.exchange}.delay.{ms}"


async def declare_exchanges(channel: aiormq.abc.AbstractChannel, options: RabbitMQOptions) -> None:
    """The topic exchange and the delay exchange (both idempotent declares)."""
    await channel.exchange_declare(
        options.exchange, exchange_type="topic", durable=options.exchange_durable
    )
    await channel.exchange_declare(delay_exchange(options), exchange_type="headers", durable=True)


def group_queue_arguments(options: RabbitMQOptions) -> dict[str, Any]:
    arguments: dict[str, Any] = {}
    if options.queue_type == "quorum":
        arguments["x-queue-type"] = "quorum"
        if options.delivery_limit:
            arguments["x-delivery-limit"] = options.delivery_limit
    return arguments


async def declare_group_queue(
    channel: aiormq.abc.AbstractChannel, options: RabbitMQOptions, name: str
) -> str:
    durable = options.durable_queues
    await channel.queue_declare(
        name,
        durable=durable,
        auto_delete=not durable,
        arguments=group_queue_arguments(options),
    )
    return name


async def declare_broadcast_queue(channel: aiormq.abc.AbstractChannel) -> str:
    declared = await channel.queue_declare("", exclusive=True, auto_delete=True)
    assert declared.queue is not None
    return declared.queue


class DelayQueues:
    """The delay queues this broker has declared lately (declared again before they expire)."""

    def __init__(self, options: RabbitMQOptions) -> None:
        self._options = options
        self._declared: dict[int, float] = {}

    @staticmethod
    def expires(ms: int) -> int:
        """``x-expires`` of a delay queue: more than twice its TTL, so that a queue declared
        at most half that long ago outlives every message put in it since."""
        return 2 * ms + 60_000

    def forget(self) -> None:
        """After a reconnect (the server may have restarted): declare each again before use."""
        self._declared.clear()

    async def ensure(self, channel: aiormq.abc.AbstractChannel, ms: int) -> None:
        now = time.monotonic()
        last = self._declared.get(ms)
        if last is not None and now - last < self.expires(ms) / 2000:
            return
        name = delay_queue(self._options, ms)
        await channel.queue_declare(
            name,
            durable=True,
            arguments={
                "x-message-ttl": ms,
                "x-dead-letter-exchange": "",
                "x-expires": self.expires(ms),
            },
        )
        await channel.queue_bind(
            name,
            delay_exchange(self._options),
            routing_key="",
            arguments={"x-match": "all", DELAY: str(ms)},
        )
        self._declared[ms] = now
