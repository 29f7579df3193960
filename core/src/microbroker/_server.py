"""The Server: hosts typed subscribers and RPC handlers on a broker."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import sys
import typing
from asyncio import current_task
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

from . import codecs
from ._broker import Broker, Handler, Subscriber
from ._client import Client
from ._context import Context
from ._delivery import Delivery, _Contract
from ._dispatch import settle_failure
from ._errors import DecodeError, MicrobrokerError
from ._message import Message
from ._plugins import report_error
from ._retry import RetryPolicy
from ._rpc_server import ServerRpc
from ._topics import check_topic

SubscriberFunc = Callable[..., Any]
"""``handler(message[, ctx])``: an async function, or a plain one (run in a worker thread)."""

Call = Callable[[Any, Context], Awaitable[Any]]
"""What a middleware calls to go on: ``await call(message, ctx)`` returns the handler's result."""

Middleware = Callable[[Call, Any, Context], Awaitable[Any]]
"""A per-subscriber wrapper: ``async def middleware(call, message, ctx)``.

It runs around the handler, with the decoded message and its context, and
must ``return await call(message, ctx)`` to go on (it may change the message,
catch or raise, time or log). What it returns is the handler's result (the
message published with ``publish_to``).
"""

# The task running a delivery, read once per delivery: ``_task_of(loop)``, with the loop
# the handler was bound in (asyncio's C get_running_loop() makes a getpid() system call
# each time on 3.11). asyncio.current_task() is Python code on 3.11, so read its (C)
# table directly there.
_task_of: Callable[[asyncio.AbstractEventLoop | None], asyncio.Task[Any] | None]
if sys.version_info < (3, 12):
    from asyncio.tasks import _current_tasks  # type: ignore[attr-defined]

    _task_of = _current_tasks.get
else:  # pragma: no cover - C code from 3.12 on
    _task_of = current_task


class SubscriberSpec:
    """A typed subscriber not yet bound to a broker: go-micro's ``server.Subscriber``.

    Made by :meth:`Server.new_subscriber`; handed to :meth:`Server.subscribe`,
    which binds it to the broker when the server starts (the live,
    broker-level subscription is a :class:`~microbroker.Subscriber`).
    """

    def __init__(
        self,
        topic: str,
        handler: SubscriberFunc,
        *,
        queue: str | None = None,
        auto_ack: bool = True,
        retry: RetryPolicy | None = None,
        max_concurrency: int = 1,
        publish_to: str | None = None,
        middleware: Sequence[Middleware] = (),
        options: dict[str, Any] | None = None,
    ) -> None:
        check_topic(topic)
        if publish_to is not None:
            check_topic(publish_to)
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        if not callable(handler):
            raise TypeError(f"subscriber {handler!r} must be a function")
        for wrapper in middleware:
            if not inspect.iscoroutinefunction(wrapper) and not inspect.iscoroutinefunction(
                getattr(wrapper, "__call__", None)  # noqa: B004
            ):
                raise TypeError(
                    f"middleware {wrapper!r} must be an async function "
                    "(async def middleware(call, message, ctx))"
                )
        self.topic = topic
        self.handler = handler
        self.queue = queue
        self.auto_ack = auto_ack
        #: Retries with backoff, then a dead letter; ``None`` is the default policy
        #: (:data:`~microbroker.DEFAULT_RETRY`).
        self.retry = retry
        #: Handlers running at once for this subscription; above 1, order is not kept.
        self.max_concurrency = max_concurrency
        #: The topic the handler's return value is published on (``None``: it is ignored).
        self.publish_to = publish_to
        #: Wrappers around the handler, outermost first (see :data:`Middleware`).
        self.middleware: list[Middleware] = list(middleware)
        self.options = options or {}
        self.message_type, self.takes_context = _signature(handler)
        #: Whether the handler is a plain function, run in a worker thread.
        self.blocking = not (
            inspect.iscoroutinefunction(handler)
            or inspect.iscoroutinefunction(getattr(handler, "__call__", None))  # noqa: B004
        )

    def __repr__(self) -> str:
        name = getattr(self.handler, "__qualname__", repr(self.handler))
        return f"<SubscriberSpec {self.topic!r} -> {name} queue={self.queue!r}>"


def _signature(handler: SubscriberFunc) -> tuple[Any, bool]:
    """The type the first parameter is decoded into, and whether a Context is passed second."""
    # For a callable object the hints are on its class's __call__.
    target: object = handler
    if not (inspect.isfunction(handler) or inspect.ismethod(handler)):
        target = type(handler).__call__
    params = [
        p
        for p in inspect.signature(handler).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if not params or len(params) > 2:
        raise TypeError(
            f"subscriber {handler!r} must take (message) or (message, ctx), "
            f"not {len(params)} positional parameters"
        )
    try:
        hints = typing.get_type_hints(target)
    except Exception as exc:  # an annotation that does not resolve
        raise TypeError(f"cannot resolve the annotations of subscriber {handler!r}: {exc}") from exc
    return hints.get(params[0].name, Any), len(params) == 2


class _InFlight:
    """The deliveries a server is handling, so that :meth:`Server.stop` can drain them."""

    __slots__ = ("closing", "idle", "running")

    def __init__(self) -> None:
        #: Set by stop(): deliveries that arrive from then on are nacked, not handled.
        self.closing = False
        self.running: dict[Delivery, asyncio.Task[Any] | None] = {}
        self.idle: asyncio.Future[None] | None = None

    def drained(self) -> None:
        """Called when the last running delivery is done: wake a waiting stop()."""
        idle = self.idle
        if idle is not None and not idle.done():
            idle.set_result(None)


class _TypedHandler:
    """Decodes each delivery into the subscriber's message type and calls it."""

    __slots__ = (
        "_call",
        "_decoders",
        "_fn",
        "_in_flight",
        "_into",
        "_loop",
        "_raw",
        "_takes_ctx",
        "_topic",
    )

    def __init__(
        self,
        subscription: SubscriberSpec,
        in_flight: _InFlight,
        publisher: Client | None = None,
    ) -> None:
        self._in_flight = in_flight
        # Made in the loop that will run its deliveries: the broker's, bound to this one.
        self._loop = asyncio.get_running_loop()
        self._fn = subscription.handler
        self._into = subscription.message_type
        self._takes_ctx = subscription.takes_context
        self._topic = subscription.topic
        self._raw = self._into in (Delivery, Message)
        # Content type (as sent) -> a function from body to value.
        self._decoders: dict[str, Callable[[bytes], Any]] = {}
        # The handler with what wraps it (middleware, a worker thread, publish_to), or None
        # for a plain async handler, called directly: the fast path.
        self._call: Callable[[Any, Delivery], Awaitable[None]] | None = _composed(
            subscription, publisher
        )

    def __call__(self, delivery: Delivery) -> Coroutine[Any, Any, None]:
        """Decode and call; an exception (a :class:`DecodeError` too) goes to the caller."""
        return self._handle(None, None, delivery)

    def _microbroker_dispatcher(self, auto_ack: bool, contract: _Contract) -> Handler:
        """This handler settling deliveries as the dispatcher would, in its own frame."""
        return functools.partial(self._handle, auto_ack, contract)

    async def _handle(
        self, auto_ack: bool | None, contract: _Contract | None, delivery: Delivery
    ) -> None:
        """Decode ``delivery``, call the subscriber and, unless ``auto_ack`` is None, settle."""
        if contract is not None:
            delivery._contract = contract
        in_flight = self._in_flight
        if in_flight.closing:
            # The server is stopping: leave the message to the broker to deliver again.
            await delivery.release()
            return
        running = in_flight.running
        running[delivery] = _task_of(self._loop)
        try:
            try:
                if self._raw:
                    value: Any = delivery if self._into is Delivery else delivery.message
                else:
                    content_type = delivery.content_type
                    decode = self._decoders.get(content_type or "")
                    try:
                        if decode is None:
                            decode = self._decoder(content_type)
                        value = decode(delivery.body)
                    except Exception as exc:
                        # The handler never sees an undecodable body: it is given up at once.
                        raise DecodeError(
                            topic=delivery.topic,
                            content_type=content_type,
                            expected=self._into,
                            cause=exc,
                        ) from exc
                call = self._call
                if call is not None:
                    await call(value, delivery)
                elif self._takes_ctx:
                    await self._fn(value, Context(delivery))
                else:
                    await self._fn(value)
            except Exception as exc:
                if auto_ack is None:
                    raise
                await settle_failure(exc, delivery)
            else:
                # The dispatcher's rules, in this frame (the delivery is still running meanwhile).
                if auto_ack and delivery._state == 0:
                    if delivery.acks_locally:
                        delivery._state = 1
                    else:
                        await delivery.ack()
        finally:
            del running[delivery]
            if not running and in_flight.idle is not None:
                in_flight.drained()

    def _decoder(self, content_type: str | None) -> Callable[[bytes], Any]:
        into = self._into
        codec = codecs.get_codec(content_type or codecs.content_type_for_type(into))
        decode: Callable[[bytes], Any]
        if isinstance(codec, codecs.ProtobufCodec) and codecs.is_protobuf_type(into):
            decode = into.FromString
        else:

            def decode(body: bytes) -> Any:
                return codec.decode(body, into)

        # The key is a header from the wire: a sender varying its parameters
        # ("application/json; x=1", "; x=2", ...) must not grow the cache without bound.
        if len(self._decoders) < 32:
            self._decoders[content_type or ""] = decode
        return decode


def _composed(
    spec: SubscriberSpec, publisher: Client | None
) -> Callable[[Any, Delivery], Awaitable[None]] | None:
    """The handler of ``spec`` with its middleware, its thread and its ``publish_to``.

    ``None`` when there is nothing around a plain async handler: it is then
    called directly, one frame less per message.
    """
    if not spec.middleware and not spec.blocking and spec.publish_to is None:
        return None
    fn = spec.handler
    takes_ctx = spec.takes_context
    call: Call
    if spec.blocking:

        async def call(message: Any, ctx: Context) -> Any:
            args = (message, ctx) if takes_ctx else (message,)
            return await asyncio.to_thread(fn, *args)

    elif takes_ctx:

        async def call(message: Any, ctx: Context) -> Any:
            return await fn(message, ctx)

    else:

        async def call(message: Any, ctx: Context) -> Any:
            return await fn(message)

    for wrapper in reversed(spec.middleware):
        call = functools.partial(wrapper, call)
    outermost = call
    publish_to = spec.publish_to
    if publish_to is None:

        async def run(message: Any, delivery: Delivery) -> None:
            await outermost(message, Context(delivery))

        return run
    if publisher is None:
        raise MicrobrokerError(f"{spec!r} has publish_to={publish_to!r} but no client to publish")
    client = publisher

    async def run_and_publish(message: Any, delivery: Delivery) -> None:
        result = await outermost(message, Context(delivery))
        if result is not None:
            # Published before the delivery is acked: a failed publish is a failed attempt,
            # so the result is not lost.
            await client.publish_value(publish_to, result, None, None, {})

    return run_and_publish


class Server(ServerRpc):
    """Hosts typed subscribers on a broker: go-micro's ``server.Server``.

    Subscribers are registered with :meth:`subscribe` (or the
    :meth:`Service.subscriber` decorator) and bound to the broker by :meth:`start`.
    """

    name = "default"

    def __init__(self, service: str, broker: Broker) -> None:
        self.service = service
        self._broker = broker
        #: The client that publishes the results of ``publish_to`` subscribers (the
        #: Service's own; a default Client on the broker when none was given).
        self.publisher: Client | None = None
        self._subscriptions: list[SubscriberSpec] = []
        self._live: dict[SubscriberSpec, Subscriber] = {}
        self._pending: set[asyncio.Task[None]] = set()
        self._in_flight = _InFlight()
        self._started = False

    @property
    def broker(self) -> Broker:
        """The broker the server subscribes on."""
        return self._broker

    @broker.setter
    def broker(self, broker: Broker) -> None:
        if self._started:
            raise MicrobrokerError(f"cannot change the broker of {self!r}: it is started")
        self._broker = broker
        self._rebind_rpc(broker)

    @property
    def started(self) -> bool:
        return self._started

    @property
    def subscribers(self) -> tuple[SubscriberSpec, ...]:
        """The typed subscribers registered on this server, in registration order."""
        return tuple(self._subscriptions)

    def new_subscriber(
        self,
        topic: str,
        handler: SubscriberFunc,
        *,
        queue: str | None = None,
        auto_ack: bool = True,
        retry: RetryPolicy | None = None,
        max_concurrency: int = 1,
        publish_to: str | None = None,
        middleware: Sequence[Middleware] = (),
        **options: Any,
    ) -> SubscriberSpec:
        """Describe a typed subscriber: ``handler(message[, ctx])``, typed by its annotation.

        The handler is an async function, or a plain one that then runs in a
        worker thread (``asyncio.to_thread``), so that it cannot block the
        event loop. ``retry`` retries a failing handler with backoff and then
        dead-letters the message (see :class:`RetryPolicy`). ``max_concurrency``
        runs up to that many handlers at once (order is then not kept); the
        broker delivers no more until one finishes, so a slow handler holds
        back delivery instead of letting messages pile up in memory.
        ``publish_to`` publishes what the handler returns (unless ``None``) on
        that topic, before the delivery is acked. ``middleware`` wraps the
        handler (see :data:`Middleware`), outermost first. Other ``options`` go
        to the broker.
        """
        return SubscriberSpec(
            topic,
            handler,
            queue=queue,
            auto_ack=auto_ack,
            retry=retry,
            max_concurrency=max_concurrency,
            publish_to=publish_to,
            middleware=middleware,
            options=options,
        )

    def subscribe(self, subscription: SubscriberSpec) -> None:
        """Register ``subscription``; it receives messages once the server is started.

        On a server already started the subscription is made in the
        background; subscribe before :meth:`start` to receive from the first
        message on.
        """
        if subscription in self._subscriptions:
            raise MicrobrokerError(f"{subscription!r} is already registered")
        self._subscriptions.append(subscription)
        if self._started:
            task = asyncio.get_running_loop().create_task(self._bind(subscription))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
            task.add_done_callback(_report_bind_failure)

    async def start(self) -> None:
        """Bind every registered subscription to the broker (which must be connected)."""
        if self._started:
            return
        self._started = True
        try:
            for subscription in self._subscriptions:
                await self._bind(subscription)
            await self._start_rpc()
        except BaseException:
            await self.stop()
            raise

    async def _bind(self, subscription: SubscriberSpec) -> None:
        publisher = None
        if subscription.publish_to is not None:
            publisher = self.publisher
            if publisher is None:
                publisher = self.publisher = Client(self.broker)
        handler: Handler = _TypedHandler(subscription, self._in_flight, publisher)
        options = dict(subscription.options)
        if subscription.max_concurrency > 1:
            options["max_concurrency"] = subscription.max_concurrency
        self._live[subscription] = await self.broker.subscribe(
            subscription.topic,
            handler,
            queue=subscription.queue,
            auto_ack=subscription.auto_ack,
            retry=subscription.retry,
            **options,
        )

    @property
    def in_flight(self) -> int:
        """How many deliveries the server's handlers are working on now."""
        return len(self._in_flight.running)

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop gracefully, then unsubscribe everything.

        The subscriptions end first: the broker delivers them nothing more, and
        what they had taken and not handled goes back to the broker (to
        another instance of the service, or to this one after a restart).
        Handlers already running get up to ``timeout`` seconds to finish (and
        are acked as usual); those still running then are released and
        cancelled. A delivery that arrives meanwhile is released, not handled.
        """
        self._started = False
        in_flight = self._in_flight
        in_flight.closing = True
        try:
            if self._pending:
                await asyncio.gather(*self._pending, return_exceptions=True)
            live, self._live = self._live, {}
            # Each subscription ends once its running handler is done (a mailbox waits for
            # it): ending them first means no delivery comes back again and again meanwhile.
            ending = asyncio.gather(
                *(sub.unsubscribe() for sub in live.values()), return_exceptions=True
            )
            await asyncio.gather(self._drain(timeout), self._stop_rpc(timeout))
            for result in await ending:
                if isinstance(result, Exception):
                    report_error(result, None)
        finally:
            in_flight.closing = False

    async def _drain(self, timeout: float) -> None:
        in_flight = self._in_flight
        current = asyncio.current_task()
        # A handler that stops its own server is not waited for: it would wait on itself.
        if any(task is not current for task in in_flight.running.values()):
            in_flight.idle = asyncio.get_running_loop().create_future()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(in_flight.idle), timeout)
            in_flight.idle = None
        for delivery, task in list(in_flight.running.items()):
            if task is current:
                continue
            await delivery.release()
            if task is not None:
                task.cancel()

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"<Server {self.name!r} service={self.service!r} broker={self.broker.name!r}>"


def _report_bind_failure(task: asyncio.Task[None]) -> None:
    # Nobody awaits a subscription made in the background: its failure goes to the error hooks.
    if not task.cancelled() and (error := task.exception()) is not None:
        report_error(error, None)


def register_subscriber(
    topic: str, server: Server, handler: SubscriberFunc, **options: Any
) -> SubscriberSpec:
    """go-micro's ``RegisterSubscriber``.

    Sugar for ``server.subscribe(server.new_subscriber(topic, handler, **options))``.
    """
    subscription = server.new_subscriber(topic, handler, **options)
    server.subscribe(subscription)
    return subscription
