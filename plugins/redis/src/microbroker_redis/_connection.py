"""The client: redis-py's asyncio ``Redis`` on a connection pool, TLS, and retrying a command.

redis-py makes a new connection for the next command after one was lost; it
does not retry here (``retry`` is off), :func:`retrying` does, with the one
backoff formula of the toolkit, for as long as the caller allows. A blocking
read (XREADGROUP BLOCK) holds a connection of the pool for its wait, one per
subscription, so the pool is not bounded: redis-py 8 stops a pool at 100
connections unless told otherwise, and the 101st subscription's acks then
failed with ``MaxConnectionsError`` (a bounded pool that waited would wait
for ever behind reads that never give their connection back).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.connection import Connection, ConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from microbroker.transport import backoff

from .errors import RedisAuthError, RedisConnectError
from .options import Endpoint, RedisOptions

T = TypeVar("T")

#: What a lost or stalled connection raises (a server restarted, killed, frozen).
LOST: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    ConnectionError,
    TimeoutError,
    OSError,
)


class TLSConnection(Connection):
    """A connection over TLS with the broker's own ``ssl.SSLContext``."""

    def __init__(self, *, tls_context: ssl.SSLContext, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._tls_context = tls_context

    def _connection_arguments(self) -> Mapping[str, Any]:
        return {
            "host": self.host,
            "port": self.port,
            "ssl": self._tls_context,
            "server_hostname": self.host,
        }


_UNBOUNDED = 2**31 - 1


def make_client(options: RedisOptions, endpoint: Endpoint) -> aioredis.Redis:
    """A client for ``endpoint``; nothing is connected until the first command."""
    kwargs: dict[str, Any] = {
        "host": endpoint.host,
        "port": endpoint.port,
        "db": endpoint.db,
        "username": endpoint.username,
        "password": endpoint.password,
        "socket_connect_timeout": options.connect_timeout,
        "socket_timeout": options.socket_timeout,
        "socket_keepalive": True,
        "client_name": options.client_name,
        "retry": Retry(NoBackoff(), 0),
        "decode_responses": False,
        # Not bounded (see the module's docstring); the server's maxclients is the limit.
        "max_connections": _UNBOUNDED,
    }
    if endpoint.tls:
        kwargs["connection_class"] = TLSConnection
        kwargs["tls_context"] = options.tls_context()
    pool = ConnectionPool(**kwargs)
    return aioredis.Redis(connection_pool=pool)


async def retrying(
    options: RedisOptions, command: Callable[[], Awaitable[T]], *, timeout: float
) -> T:
    """Run ``command`` again after a lost connection, for ``timeout`` seconds at most.

    A command the connection lost may have reached the server: a retried XADD can
    add a duplicate (at least once), never lose the message silently.
    """
    deadline = time.monotonic() + timeout
    attempt = 0
    while True:
        try:
            return await command()
        except LOST:
            attempt += 1
            wait = backoff(attempt, options.reconnect_delay, 2.0, options.max_reconnect_delay)
            left = deadline - time.monotonic()
            if left <= 0:
                raise
            await asyncio.sleep(min(wait, left))


def connect_error(endpoint: Endpoint, exc: BaseException, timeout: float) -> RedisConnectError:
    """The error ``connect()`` raises for ``exc``: what went wrong, and what to give instead.

    The message names the endpoint without its password, and never shows the password.
    """
    where = f"redis broker cannot connect to {endpoint}"
    if isinstance(exc, redis.exceptions.AuthenticationError):
        who = f"the user {endpoint.username!r}" if endpoint.username else "the default user"
        if endpoint.password is None:
            hint = (
                "the server wants a password: give it in the address "
                "(redis://user:password@host:port) or as password="
            )
        else:
            hint = (
                f"the server refused the password of {who}: check the user and password "
                "in the address (or username=, password=)"
            )
        return RedisAuthError(f"{where}: {hint} ({exc})")
    tls = _tls_cause(exc)
    if isinstance(tls, ssl.SSLCertVerificationError):
        return RedisConnectError(
            f"{where}: the server presented a TLS certificate this broker does not trust "
            f"({tls.verify_message}): give tls_ca_file= the CA that issued it (or tls= an "
            "ssl.SSLContext that trusts it)"
        )
    if tls is not None:
        return RedisConnectError(
            f"{where}: the TLS handshake failed ({tls}); a rediss:// address needs the "
            "server's TLS port (tls-port)"
        )
    if isinstance(exc, redis.exceptions.TimeoutError | TimeoutError):
        text = f"{where}: the server did not answer in time ({exc}; connect_timeout={timeout})"
        if endpoint.tls:
            # A port without TLS reads the handshake as the start of a command and waits.
            text += (
                "; a rediss:// address needs the server's TLS port (tls-port): a port "
                "without TLS does not answer the TLS handshake"
            )
        return RedisConnectError(text)
    return RedisConnectError(f"{where}: {exc}")


def _tls_cause(exc: BaseException) -> ssl.SSLError | None:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
