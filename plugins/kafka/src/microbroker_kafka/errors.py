"""The errors the Kafka broker raises, on top of microbroker's own hierarchy."""

from __future__ import annotations

from microbroker import MicrobrokerError, PublishError


class KafkaError(MicrobrokerError):
    """Base class of the errors specific to the Kafka broker."""


class KafkaConnectError(KafkaError, ConnectionError):
    """No server in the address list could be reached (wrong address, server down, TLS, SASL)."""


class SubscribeError(KafkaError):
    """A subscription could not start: its topic could not be created or its group not joined."""


__all__ = ["KafkaConnectError", "KafkaError", "PublishError", "SubscribeError"]
