"""Service: a broker, a client and a server, chosen from the environment and the plugins."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import weakref
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar

from ._broker import Broker
from ._client import Client
from ._errors import MicrobrokerError, PluginError, PluginNotFound
from ._event import Event
from ._retry import RetryPolicy
from ._rpc_server import RpcHandler
from ._selection import UnavailableBroker, create, get_broker
from ._server import Middleware, Server, SubscriberFunc

F = TypeVar("F", bound=SubscriberFunc)

logger = logging.getLogger("microbroker.service")


class Service:
    """A named service: go-micro's ``micro.Service``.

    By default the broker comes from ``MICRO_BROKER`` / ``MICRO_BROKER_ADDRESS``,
    the client from ``MICRO_CLIENT`` and the server from ``MICRO_SERVER``
    (both ``default``); pass your own to override them.
    """

    def __init__(
        self,
        name: str,
        *,
        broker: Broker | None = None,
        client: Client | None = None,
        server: Server | None = None,
        stop_timeout: float = 10.0,
    ) -> None:
        """:param stop_timeout: seconds :meth:`stop` lets running handlers finish."""
        self.name = name
        self.stop_timeout = stop_timeout
        # Made when first needed, so that a test (microbroker.testing) or an application can
        # give the service another broker first, whatever MICRO_BROKER says.
        self._broker = broker
        self._client = client
        self._server = server
        self._connected_here = False
        # The Events this service made, for its AsyncAPI document. Held weakly: an Event
        # made per publish (``service.event(t).publish(m)``) must not pile up here.
        self._events: weakref.WeakKeyDictionary[Event, None] = weakref.WeakKeyDictionary()

    @property
    def broker(self) -> Broker:
        """The broker: the one given, else ``get_broker()`` (``MICRO_BROKER``), made on demand.

        A broker that cannot be made (not installed) is an
        :class:`UnavailableBroker`, whose ``connect()`` raises why.
        """
        broker = self._broker
        if broker is None:
            try:
                broker = get_broker()
            except (PluginNotFound, PluginError) as exc:
                # Raised when the service connects; until then a test can give it a broker.
                broker = UnavailableBroker(exc)
            self._broker = broker
            # A client or server made before (by a test run that lent its own broker).
            if self._client is not None:
                self._client.broker = broker
            if self._server is not None:
                self._server.broker = broker
        return broker

    @broker.setter
    def broker(self, broker: Broker) -> None:
        """Use ``broker`` from now on, in the client and the server too (the service is stopped)."""
        if self._server is not None and self._server.started:
            raise MicrobrokerError(f"cannot change the broker of {self!r}: it is started")
        self._broker = broker
        if self._client is not None:
            self._client.broker = broker
        if self._server is not None:
            self._server.broker = broker
            self._server.publisher = self.client

    @property
    def client(self) -> Client:
        """The client: the one given, else the one ``MICRO_CLIENT`` names (``default``)."""
        client = self._client
        if client is None:
            client = self._client = create(
                "client", os.environ.get("MICRO_CLIENT") or "default", broker=self.broker
            )
        return client

    @property
    def server(self) -> Server:
        """The server: the one given, else the one ``MICRO_SERVER`` names (``default``)."""
        server = self._server
        if server is None:
            server = self._server = create(
                "server",
                os.environ.get("MICRO_SERVER") or "default",
                service=self.name,
                broker=self.broker,
            )
            server.publisher = self.client
        return server

    def event(self, topic: str, *, content_type: str | None = None) -> Event:
        """A typed publisher for ``topic`` (go-micro's ``micro.NewEvent``)."""
        event = Event(topic, self.client, content_type=content_type)
        self._events[event] = None
        return event

    @property
    def events(self) -> tuple[Event, ...]:
        """The Events made by :meth:`event` that are still in use, in the order they were made."""
        return tuple(self._events)

    def subscriber(
        self,
        topic: str,
        *,
        queue: str | None = None,
        auto_ack: bool = True,
        retry: RetryPolicy | None = None,
        max_concurrency: int = 1,
        publish_to: str | None = None,
        middleware: Sequence[Middleware] = (),
        **options: Any,
    ) -> Callable[[F], F]:
        """Decorate ``async def handler(message: T, ctx: Context)`` to subscribe it to ``topic``.

        The message is decoded into the handler's first parameter annotation. A
        plain (not async) handler runs in a worker thread. ``publish_to``
        publishes what the handler returns on that topic; ``middleware`` wraps
        it (see :meth:`Server.new_subscriber`).
        """

        def decorate(handler: F) -> F:
            self.server.subscribe(
                self.server.new_subscriber(
                    topic,
                    handler,
                    queue=queue,
                    auto_ack=auto_ack,
                    retry=retry,
                    max_concurrency=max_concurrency,
                    publish_to=publish_to,
                    middleware=middleware,
                    **options,
                )
            )
            return handler

        return decorate

    def handle(self, handler: object, *, name: str | None = None) -> RpcHandler:
        """Serve ``handler``'s public async methods as the RPC endpoints ``Name.Method``.

        Sugar for ``server.handle(server.new_handler(handler, name=name))``.
        """
        rpc_handler = self.server.new_handler(handler, name=name)
        self.server.handle(rpc_handler)
        return rpc_handler

    async def start(self) -> None:
        """Connect the broker (unless it is connected already) and start the server.

        Starting a started service does nothing. Once started, it logs at INFO on
        ``microbroker.service`` what it serves and where.
        """
        started = self.server.started
        if not self.broker.connected:
            await self.broker.connect()
            self._connected_here = True
        try:
            await self.server.start()
        except BaseException:
            # Nobody calls stop() after a failed start (``async with`` does not call
            # __aexit__): leave no connection open behind the error.
            await self.stop()
            raise
        if not started and logger.isEnabledFor(logging.INFO):
            _log_started(self)

    async def stop(self) -> None:
        """Stop gracefully (see :meth:`Server.stop`), then disconnect the broker if
        :meth:`start` connected it: the broker drains what it still holds."""
        started = self.server.started
        if started:
            logger.info(
                "service %r stopping: running handlers get up to %gs",
                self.name,
                self.stop_timeout,
            )
        try:
            await self.server.stop(self.stop_timeout)
        finally:
            if self._connected_here:
                self._connected_here = False
                await self.broker.disconnect()
        if started:
            logger.info("service %r stopped", self.name)

    async def run(
        self, *, signals: Iterable[signal.Signals] = (signal.SIGINT, signal.SIGTERM)
    ) -> None:
        """Start, serve until one of ``signals`` arrives (or the task is cancelled), then stop."""
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        installed: list[signal.Signals] = []
        for sig in signals:
            try:
                loop.add_signal_handler(sig, stopping.set)
                installed.append(sig)
            except (NotImplementedError, RuntimeError):  # not the main thread, or Windows
                pass
        try:
            await self.start()
            await stopping.wait()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
            await self.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def __repr__(self) -> str:
        return f"<Service {self.name!r} broker={self.broker.name!r}>"


def _log_started(service: Service) -> None:
    """The start-up lines: the service, its broker and address, each subscriber and handler."""
    broker = service.broker
    # A broker that serves on a free port (http) knows the real port only once connected.
    address = getattr(broker, "bound_address", None) or broker.address
    where = f" at {address}" if address else ""
    logger.info("service %r started on the %s broker%s", service.name, broker.name, where)
    for sub in service.server.subscribers:
        fn = sub.handler
        name = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
        group = f" in queue group {sub.queue!r}" if sub.queue else ""
        logger.info("  subscriber %s on %r%s", name, sub.topic, group)
    for handler in service.server.handlers:
        endpoints = ", ".join(sorted(handler.endpoints))
        logger.info("  rpc handler %s: %s", handler.name, endpoints)
