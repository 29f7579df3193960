"""The errors the Redis broker raises, on top of microbroker's own hierarchy."""

from __future__ import annotations

from microbroker import MicrobrokerError, PublishError


class RedisError(MicrobrokerError):
    """Base class of the errors specific to the Redis broker."""


class RedisConnectError(RedisError, ConnectionError):
    """``connect()`` could not reach the server, or the TLS handshake failed."""


class RedisAuthError(RedisConnectError):
    """The server refused the user and password (``WRONGPASS``), or wants one (``NOAUTH``)."""


__all__ = ["PublishError", "RedisAuthError", "RedisConnectError", "RedisError"]
