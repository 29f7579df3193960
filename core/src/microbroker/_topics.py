"""Topic rules every broker shares, and the description of a broker's wildcard syntax."""

from __future__ import annotations

from dataclasses import dataclass

from ._errors import InvalidTopic


@dataclass(frozen=True, slots=True)
class Wildcards:
    """The wildcard syntax of a broker's topics.

    For example NATS: ``.``, ``*``, ``>``; MQTT: ``/``, ``+``, ``#``; AMQP
    (RabbitMQ): ``.``, ``*``, ``#``, whose ``#`` also matches zero levels.
    """

    separator: str
    one: str
    """Matches exactly one level."""
    many: str
    """Matches one or more trailing levels."""
    many_matches_zero: bool = False
    """Whether ``many`` also matches no level at all: ``a.#`` receives ``a`` itself.

    So do AMQP's ``#`` (RabbitMQ) and MQTT's ``#``; NATS's ``>`` does not. The
    conformance suite holds a broker that declares it to it.
    """


def check_topic(topic: str) -> None:
    """Raise :class:`~microbroker.InvalidTopic` for a topic no broker can carry.

    That is: not a str, empty, or holding control characters (which split or
    end a topic on the wire of several transports). Each broker adds its own
    rules (length, characters, wildcards) in its ``send`` and ``receive``.
    """
    if not topic or type(topic) is not str or not topic.isprintable():
        if not isinstance(topic, str):
            raise InvalidTopic(f"a topic is a str, not {type(topic).__name__}")
        if not topic:
            raise InvalidTopic("the topic is empty")
        raise InvalidTopic(f"a topic cannot hold control characters: {topic!r}")
