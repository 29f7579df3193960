"""The errors the MQTT broker raises, on top of microbroker's own hierarchy."""

from __future__ import annotations

from microbroker import MicrobrokerError, PublishError


class MqttError(MicrobrokerError):
    """Base class of the errors specific to the MQTT broker."""


class MqttConnectError(MqttError, ConnectionError):
    """The server could not be reached, or refused the connection (wrong address, TLS...)."""


class MqttAuthError(MqttConnectError):
    """The server refused the username and password (or the client is not authorised)."""


class SubscribeError(MqttError):
    """The server refused a subscription (not authorised, shared subscriptions unsupported...)."""


__all__ = [
    "MqttAuthError",
    "MqttConnectError",
    "MqttError",
    "PublishError",
    "SubscribeError",
]
