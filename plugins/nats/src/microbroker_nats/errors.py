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


__all__ = [
    "NatsAuthError",
    "NatsConnectError",
    "NatsError",
    "NoResponders",
    "PublishError",
    "RequestTimeout",
    "StreamError",
]
