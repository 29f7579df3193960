"""One AMQP connection that comes back by itself: connect, watch, reconnect, declare again.

aiormq gives one connection and its channels; when the server goes away they
are gone for good. :class:`Link` keeps the broker's connection: it connects
to the first endpoint that answers, watches the connection, and when it is
lost connects again (each endpoint in turn, waiting by
:func:`microbroker.transport.backoff`), declares the exchanges again, and
asks every subscription to consume again (:meth:`Link.on_reconnect`).
Publishes wait on :meth:`Link.ready` while it is away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import aiormq
import aiormq.abc

from microbroker.transport import NotConnected, backoff, report_error

from .errors import ConnectError
from .options import Endpoint, RabbitMQOptions

logger = logging.getLogger("microbroker.broker.rabbitmq")

Reconnected = Callable[[aiormq.abc.AbstractConnection], Awaitable[None]]


def amqp_url(endpoint: Endpoint, options: RabbitMQOptions) -> str:
    """The URL aiormq connects to: the endpoint, with the heartbeat and connection name."""
    scheme = "amqps" if endpoint.tls else "amqp"
    from urllib.parse import quote, urlencode

    auth = f"{quote(endpoint.user, safe='')}:{quote(endpoint.password, safe='')}@"
    host = f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host
    # aiormq reads the virtual host from the path: "/" is the default one, and a "/" inside
    # a name is written %2F.
    path = "/" if endpoint.vhost == "/" else "/" + quote(endpoint.vhost, safe="")
    query: dict[str, str] = {"heartbeat": str(options.heartbeat)}
    if options.connection_name:
        query["name"] = options.connection_name
    return f"{scheme}://{auth}{host}:{endpoint.port}{path}?{urlencode(query)}"


class Link:
    """The broker's connection to RabbitMQ, reconnected whenever it is lost."""

    def __init__(
        self,
        options: RabbitMQOptions,
        endpoints: list[Endpoint],
        declare: Callable[[aiormq.abc.AbstractConnection], Awaitable[None]],
    ) -> None:
        self._options = options
        self._endpoints = endpoints
        self._declare = declare
        self._tls: ssl.SSLContext | None = None
        self._connection: aiormq.abc.AbstractConnection | None = None
        self._ready = asyncio.Event()
        self._closed = False
        self._watcher: asyncio.Task[None] | None = None
        self._listeners: list[Reconnected] = []
        self._next = 0
        #: How often the connection was made again after a loss (for tests and logs).
        self.reconnects = 0

    @property
    def connection(self) -> aiormq.abc.AbstractConnection | None:
        """The live connection, or ``None`` while reconnecting (or closed)."""
        return self._connection if self._ready.is_set() else None

    @property
    def closed(self) -> bool:
        return self._closed

    def _stopped(self) -> bool:
        # A method, not the attribute: it changes while this task awaits.
        return self._closed

    @property
    def frame_max(self) -> int:
        connection = self._connection
        tune = getattr(connection, "connection_tune", None)
        frame_max = int(getattr(tune, "frame_max", 0) or 0)
        return frame_max or 131072

    def on_reconnect(self, listener: Reconnected) -> Callable[[], None]:
        """Call ``listener(connection)`` after each reconnect; returns a function that stops it."""
        self._listeners.append(listener)

        def remove() -> None:
            with contextlib.suppress(ValueError):
                self._listeners.remove(listener)

        return remove

    async def open(self) -> None:
        """Connect (trying each endpoint once), declare the topology, and start watching."""
        if any(e.tls for e in self._endpoints):
            self._tls = self._options.tls_context()
        errors: list[str] = []
        for _ in self._endpoints:
            try:
                connection = await self._connect_one()
            except Exception as exc:
                errors.append(f"{self._endpoints[self._next - 1]}: {_describe(exc)}")
                continue
            self._set(connection)
            self._watcher = asyncio.get_running_loop().create_task(
                self._watch(), name="microbroker-rabbitmq-reconnect"
            )
            return
        raise ConnectError(
            "rabbitmq broker cannot connect to "
            + "; ".join(errors)
            + ": is RabbitMQ running there, and are the user, password and vhost right?"
        )

    async def _connect_one(self) -> aiormq.abc.AbstractConnection:
        endpoint = self._endpoints[self._next % len(self._endpoints)]
        self._next += 1
        connection = aiormq.Connection(
            amqp_url(endpoint, self._options),
            context=self._tls if endpoint.tls else None,
            client_properties={"connection_name": self._options.connection_name or "microbroker"},
        )
        try:
            async with asyncio.timeout(self._options.connect_timeout):
                await connection.connect()
                await self._declare(connection)
        except BaseException:
            with contextlib.suppress(Exception):
                await connection.close()
            raise
        return connection

    def _set(self, connection: aiormq.abc.AbstractConnection) -> None:
        self._connection = connection
        self._ready.set()

    async def ready(self, timeout: float) -> aiormq.abc.AbstractConnection:
        """The live connection, waiting up to ``timeout`` seconds for a reconnect."""
        connection = self.connection
        if connection is not None:
            return connection
        if self._closed:
            raise NotConnected("rabbitmq broker is disconnected")
        try:
            async with asyncio.timeout(timeout):
                while True:
                    await self._ready.wait()
                    connection = self.connection
                    if connection is not None:
                        return connection
                    if self._stopped():
                        break
        except TimeoutError:
            raise NotConnected(
                f"rabbitmq broker lost its connection and has not reconnected within {timeout}s"
            ) from None
        raise NotConnected("rabbitmq broker is disconnected")

    def lost(self, connection: aiormq.abc.AbstractConnection) -> None:
        """Someone saw ``connection`` fail (a channel that cannot be opened): reconnect."""
        if self._connection is connection and self._ready.is_set():
            self._ready.clear()
            task = asyncio.get_running_loop().create_task(connection.close())
            task.add_done_callback(_ignore_result)

    async def _watch(self) -> None:
        while not self._stopped():
            connection = self._connection
            assert connection is not None
            with contextlib.suppress(BaseException):
                await connection.closing
            if self._stopped():
                return
            self._ready.clear()
            logger.warning("rabbitmq connection lost; reconnecting")
            attempt = 0
            while not self._stopped():
                attempt += 1
                try:
                    new = await self._connect_one()
                except Exception as exc:
                    delay = backoff(
                        attempt,
                        self._options.reconnect_delay,
                        2.0,
                        self._options.max_reconnect_delay,
                    )
                    logger.debug("rabbitmq reconnect attempt %d failed: %s", attempt, exc)
                    await asyncio.sleep(delay)
                    continue
                if self._stopped():
                    await new.close()
                    return
                self.reconnects += 1
                self._set(new)
                logger.warning("rabbitmq connection restored after %d attempt(s)", attempt)
                for listener in list(self._listeners):
                    try:
                        await listener(new)
                    except Exception as exc:
                        report_error(exc, None)
                break

    async def close(self) -> None:
        """Close the connection and stop reconnecting. Twice is harmless."""
        if self._closed:
            return
        self._closed = True
        watcher = self._watcher
        if watcher is not None and watcher is not asyncio.current_task():
            watcher.cancel()
            with contextlib.suppress(BaseException):
                await watcher
        connection = self._connection
        self._connection = None
        self._ready.set()  # wakes the publishes waiting for a reconnect: they see it closed
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.close()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if type(exc).__name__ not in text else text


def _ignore_result(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()
