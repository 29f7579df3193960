"""The errors microbroker-rabbitmq raises of its own (the rest are microbroker's)."""

from __future__ import annotations

from microbroker import MicrobrokerError


class ConnectError(MicrobrokerError, ConnectionError):
    """No server of the address could be reached (or it refused the credentials)."""
