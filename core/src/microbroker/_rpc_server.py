"""The serving side of RPC: :meth:`Server.new_handler`, :meth:`Server.handle` and the endpoints."""

from __future__ import annotations

import asyncio
import collections.abc
import contextlib
import inspect
import logging
import os
import types
import typing
from collections.abc import AsyncIterator, Callable, Coroutine, Generator
from typing import Any

from . import codecs
from ._broker import Broker, Subscriber
from ._context import Context
from ._delivery import Delivery
from ._errors import DecodeError, MicrobrokerError, RpcError
from ._headers import CONTENT_TYPE, ENDPOINT, ERROR, ID
from ._message import Message
from ._plugins import report_error
from ._rpc import (
    CANCEL,
    CREDIT,
    DATA,
    DEFAULT_WINDOW,
    END,
    FRAME,
    GRANT,
    OPEN,
    REPLY_TO,
    SEQ,
    SERVER_ID,
    STREAM,
    RequestReply,
    error_message,
    inbox_topic,
    parse_error,
    remaining,
    service_topic,
)
from ._rpc_stream import Receiver, Sender, error_frame, frame

logger = logging.getLogger("microbroker.rpc")

_ITERATORS = (
    collections.abc.AsyncIterator,
    collections.abc.AsyncIterable,
    collections.abc.AsyncGenerator,
)


def _item_type(annotation: Any) -> Any | None:
    """``T`` for ``AsyncIterator[T]`` (or AsyncIterable, AsyncGenerator), else ``None``."""
    if annotation in _ITERATORS:
        return Any
    if typing.get_origin(annotation) in _ITERATORS:
        args = typing.get_args(annotation)
        return args[0] if args else Any
    return None


class Endpoint:
    """One RPC endpoint, ``Handler.Method``: a bound async method and its message types.

    ``client_stream``: the method takes an ``AsyncIterator[Request]``;
    ``server_stream``: it is an async generator yielding replies. Neither: a
    unary call (``async def M(self, req: Req) -> Rsp``).
    """

    __slots__ = (
        "client_stream",
        "fn",
        "name",
        "request_type",
        "response_type",
        "server_stream",
        "takes_context",
    )

    def __init__(self, name: str, fn: Callable[..., Any]) -> None:
        self.name = name
        self.fn = fn
        self.server_stream = inspect.isasyncgenfunction(fn)
        params = [
            p
            for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        if not params or len(params) > 2:
            raise TypeError(
                f"endpoint {name} must take (request) or (request, ctx), "
                f"not {len(params)} positional parameters"
            )
        try:
            hints = typing.get_type_hints(fn)
        except Exception as exc:  # an annotation that does not resolve
            raise TypeError(f"cannot resolve the annotations of endpoint {name}: {exc}") from exc
        annotation = hints.get(params[0].name, Any)
        item = _item_type(annotation)
        self.client_stream = item is not None
        self.request_type: Any = item if item is not None else annotation
        returns = hints.get("return", Any)
        if self.server_stream:
            item = _item_type(returns)
            self.response_type: Any = Any if item is None else item
        else:
            self.response_type = returns
        self.takes_context = len(params) == 2

    @property
    def streaming(self) -> bool:
        return self.client_stream or self.server_stream

    def invoke(self, value: Any, delivery: Delivery) -> Any:
        if self.takes_context:
            return self.fn(value, Context(delivery))
        return self.fn(value)

    def __repr__(self) -> str:
        kind = {
            (False, False): "unary",
            (False, True): "server stream",
            (True, False): "client stream",
            (True, True): "bidirectional stream",
        }[(self.client_stream, self.server_stream)]
        return f"<Endpoint {self.name} {kind}>"


class RpcHandler:
    """A named set of endpoints: go-micro's ``server.Handler``. Made by :meth:`Server.new_handler`.

    Every public async method (or async generator) of ``handler`` is the
    endpoint ``Name.Method``, where ``Name`` is ``name`` or the class name.
    """

    def __init__(self, handler: object, *, name: str | None = None) -> None:
        if isinstance(handler, type):
            raise TypeError(f"new_handler() takes an instance, not the class {handler.__name__}")
        self.handler = handler
        self.name = name or type(handler).__name__
        self.endpoints: dict[str, Endpoint] = {}
        for attr in dir(handler):
            if attr.startswith("_"):
                continue
            fn = getattr(handler, attr, None)
            if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
                endpoint = Endpoint(f"{self.name}.{attr}", fn)
                self.endpoints[endpoint.name] = endpoint
        if not self.endpoints:
            raise TypeError(
                f"{type(handler).__qualname__} has no public async method to serve as an endpoint"
            )

    def __repr__(self) -> str:
        return f"<RpcHandler {self.name} endpoints={sorted(self.endpoints)}>"


class _Expired(Exception):
    """The request's deadline passed: the caller has given up, nothing is sent."""


@types.coroutine
def _resume(call: Coroutine[Any, Any, Any], step: Any) -> Generator[Any, Any, Any]:
    """Go on with ``call``, a coroutine that suspended yielding ``step``, as ``await`` would.

    What the task sends or throws in goes to ``call`` (a cancellation included),
    what ``call`` yields goes to the task, and its result is the result.
    """
    while True:
        try:
            sent = yield step
        except GeneratorExit:
            call.close()
            raise
        except BaseException as exc:
            try:
                step = call.throw(exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                step = call.send(sent)
            except StopIteration as stop:
                return stop.value


class RpcServer:
    """The RPC machinery of one :class:`Server`: request subscription, inbox, running calls."""

    def __init__(self, service: str, broker: Broker, *, max_concurrency: int, window: int) -> None:
        self.service = service
        self.broker = broker
        self.window = window
        self.endpoints: dict[str, Endpoint] = {}
        self.handlers: list[RpcHandler] = []
        self.id = os.urandom(8).hex()
        self.inbox = inbox_topic(self.id)
        self._sub: Subscriber | None = None
        self._inbox_sub: Subscriber | None = None
        self._inbox_lock = asyncio.Lock()
        self.max_concurrency = max_concurrency
        self._running = 0
        self._slot_waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._streams: dict[str, _ServerStream] = {}
        self._codecs: dict[str, codecs.Codec] = {}
        self.closing = False

    #: The loop the server runs on, set by :meth:`start` (before any request comes).
    _loop: asyncio.AbstractEventLoop

    def add(self, handler: RpcHandler) -> None:
        taken = self.endpoints.keys() & handler.endpoints.keys()
        if taken:
            raise MicrobrokerError(
                f"service {self.service!r} already serves {', '.join(sorted(taken))}: "
                "give the handler another name with new_handler(obj, name=...)"
            )
        self.handlers.append(handler)
        self.endpoints.update(handler.endpoints)

    def codec(self, content_type: str) -> codecs.Codec:
        codec = self._codecs.get(content_type)
        if codec is None:
            codec = self._codecs[content_type] = codecs.get_codec(content_type)
        return codec

    @property
    def started(self) -> bool:
        return self._sub is not None

    async def start(self) -> None:
        """Take requests on the service's topic, sharing them with the other instances."""
        if self._sub is not None or not self.endpoints:
            return
        self.closing = False
        # Kept: asyncio.get_running_loop() makes a system call on Python 3.11 (getpid).
        self._loop = asyncio.get_running_loop()
        topic = service_topic(self.service)
        if isinstance(self.broker, RequestReply):
            # The responder answers through delivery.respond() from the call's task: None here.
            self._sub = await self.broker.serve(topic, self._on_request, queue=self.service)
        else:
            self._sub = await self.broker.subscribe(
                topic, self._on_request, queue=self.service, auto_ack=True
            )

    async def stop(self, timeout: float) -> None:
        """Take no more requests; let running ones finish up to ``timeout``, cancel the rest."""
        self.closing = True
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        tasks = set(self._tasks)
        current = asyncio.current_task()
        tasks.discard(current)
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=timeout)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=timeout)
        inbox, self._inbox_sub = self._inbox_sub, None
        if inbox is not None:
            with contextlib.suppress(Exception):
                await inbox.unsubscribe()

    async def _on_request(self, delivery: Delivery) -> None:
        if self.closing:
            # Left to the broker: another instance (or this one, restarted) takes it.
            await delivery.nack()
            return
        # Waiting for a slot holds the broker back: running calls never exceed max_concurrency.
        if self._running >= self.max_concurrency:
            await self._wait_for_slot()
        self._running += 1
        self._tasks.add(self._loop.create_task(self._serve(delivery)))

    async def _wait_for_slot(self) -> None:
        # A counter and a queue of waiters instead of an asyncio.Semaphore: a free slot (the
        # common case) costs no coroutine.
        loop = asyncio.get_running_loop()
        waiters = self._slot_waiters
        while self._running >= self.max_concurrency:
            waiter = loop.create_future()
            waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if not waiter.cancelled():
                    self._wake_one()  # woken, then cancelled: the slot goes to the next
                else:
                    with contextlib.suppress(ValueError):
                        waiters.remove(waiter)
                raise

    def _wake_one(self) -> None:
        waiters = self._slot_waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _finished(self, task: asyncio.Task[Any] | None) -> None:
        if task is not None:
            self._tasks.discard(task)
        self._running -= 1
        if self._slot_waiters:
            self._wake_one()

    async def _serve(self, delivery: Delivery) -> None:
        # The task's bookkeeping is done in its own frame rather than by a done callback (one
        # loop callback less per request). stop() cancels none before its first step: it
        # waits (a turn of the loop) before it cancels, so the finally always runs.
        try:
            message = delivery.message
            kind = message.header(FRAME)
            if kind is not None:
                if kind == OPEN:
                    await self._open(delivery)
                return
            native = getattr(delivery, "reply_to", None)
            reply_to = None if native else message.header(REPLY_TO)
            try:
                reply = await self._unary(delivery)
            except _Expired:
                logger.debug("dropped a request whose deadline passed: %r", delivery)
                return
            except asyncio.CancelledError:
                # The server is stopping and the call did not finish: say so rather than let the
                # caller wait for its timeout (it may retry on another instance).
                if self.closing:
                    error = RpcError(SERVER_ID, 503, f"{self.service} stopped before answering")
                    await self._reply(delivery, native, reply_to, error_message(error, None))
                raise
            await self._reply(delivery, native, reply_to, reply)
        finally:
            self._finished(asyncio.current_task(self._loop))

    async def _reply(
        self, delivery: Delivery, native: str | None, reply_to: str | None, reply: Message
    ) -> None:
        request_id = delivery.message.header(ID)
        if request_id is not None:
            reply.headers[ID] = request_id
        try:
            if native:
                await delivery.respond(reply)  # type: ignore[attr-defined]
            elif reply_to is not None:
                await self.broker.publish(reply_to, reply)
        except Exception as exc:
            report_error(exc, delivery)

    async def _unary(self, delivery: Delivery) -> Message:
        message = delivery.message
        left = remaining(message)
        if left is not None and left <= 0:
            raise _Expired
        name = message.header(ENDPOINT) or ""
        endpoint = self.endpoints.get(name)
        if endpoint is None:
            return error_message(self._unknown(name), None)
        if endpoint.streaming:
            error = RpcError(
                SERVER_ID, 400, f"{name} is a streaming endpoint: call it with client.stream()"
            )
            return error_message(error, None)
        content_type = message.header(CONTENT_TYPE)
        try:
            value = self._decode(delivery, message, content_type, endpoint)
        except RpcError as exc:
            return error_message(exc, None)
        deadline: asyncio.Timeout | None = None
        try:
            call = endpoint.invoke(value, delivery)
            if type(call) is types.CoroutineType:
                # Started here, in this task: a handler that returns before it first suspends
                # needs no timer (none could fire before it suspends), and one that suspends
                # goes on under the deadline, from the point where it stopped.
                try:
                    step = call.send(None)
                except StopIteration as stop:
                    result = stop.value
                else:
                    deadline = asyncio.timeout(left)
                    async with deadline:
                        result = await _resume(call, step)
            else:
                deadline = asyncio.timeout(left)
                async with deadline:
                    result = await call
        except TimeoutError as exc:
            if deadline is not None and deadline.expired():
                raise _Expired from exc
            return error_message(self._failed(exc, delivery), None)
        except RpcError as exc:
            return error_message(exc, None)
        except Exception as exc:
            return error_message(self._failed(exc, delivery), None)
        try:
            return self.encode(result, content_type)
        except Exception as exc:
            return error_message(self._failed(exc, delivery), None)

    def _unknown(self, name: str) -> RpcError:
        served = ", ".join(sorted(self.endpoints)) or "none"
        return RpcError(
            SERVER_ID,
            404,
            f"service {self.service!r} has no endpoint {name!r} (it serves: {served})",
        )

    def _failed(self, exc: Exception, delivery: Delivery) -> RpcError:
        report_error(exc, delivery)
        return RpcError(self.service, 500, f"{type(exc).__name__}: {exc}")

    def _decode(
        self, delivery: Delivery, message: Message, content_type: str | None, endpoint: Endpoint
    ) -> Any:
        into = endpoint.request_type
        try:
            return self.codec(content_type or codecs.content_type_for_type(into)).decode(
                message.body, into
            )
        except Exception as exc:
            error = DecodeError(
                topic=delivery.topic, content_type=content_type, expected=into, cause=exc
            )
            report_error(error, delivery)
            raise RpcError(SERVER_ID, 400, str(error)) from exc

    def encode(self, value: Any, content_type: str | None) -> Message:
        """The reply body in the request's content type, or the value's own when it cannot be."""
        if content_type:
            try:
                return Message(self.codec(content_type).encode(value), {CONTENT_TYPE: content_type})
            except MicrobrokerError:
                pass
        chosen = codecs.content_type_for(value)
        return Message(self.codec(chosen).encode(value), {CONTENT_TYPE: chosen})

    # Streams ---------------------------------------------------------------------

    async def _ensure_inbox(self) -> None:
        if self._inbox_sub is not None and self._inbox_sub.active:
            return
        async with self._inbox_lock:
            if self._inbox_sub is None or not self._inbox_sub.active:
                self._inbox_sub = await self.broker.subscribe(self.inbox, self._on_frame)

    async def _on_frame(self, delivery: Delivery) -> None:
        message = delivery.message
        stream = self._streams.get(message.header(STREAM) or "")
        if stream is not None:
            stream.on_frame(message.header(FRAME) or "", message)

    async def _open(self, delivery: Delivery) -> None:
        message = delivery.message
        stream_id = message.header(STREAM)
        client = message.header(REPLY_TO)
        if not stream_id or not client:
            return
        left = remaining(message)
        if left is not None and left <= 0:
            return
        name = message.header(ENDPOINT) or ""
        endpoint = self.endpoints.get(name)
        if endpoint is None:
            await self.broker.publish(client, error_frame(stream_id, self._unknown(name)))
            return
        await self._ensure_inbox()
        stream = _ServerStream(self, endpoint, delivery, stream_id, client)
        self._streams[stream_id] = stream
        try:
            accept = frame(stream_id, GRANT, **{CREDIT: str(self.window), REPLY_TO: self.inbox})
            await self.broker.publish(client, Message(b"", accept))
            await stream.run(left)
        finally:
            del self._streams[stream_id]


class _ServerStream:
    """The server's side of one stream: runs the handler, frames its input and output."""

    def __init__(
        self,
        server: RpcServer,
        endpoint: Endpoint,
        delivery: Delivery,
        stream_id: str,
        client: str,
    ) -> None:
        self.server = server
        self.endpoint = endpoint
        self.delivery = delivery
        self.id = stream_id
        self.client = client
        message = delivery.message
        self.content_type = message.header(CONTENT_TYPE)
        self.receiver = Receiver(server.window, self._grant)
        self.sender = Sender(_int(message.header(CREDIT)))
        self.cancelled = False
        self.task = asyncio.current_task()

    def on_frame(self, kind: str, message: Message) -> None:
        if kind == DATA:
            self.receiver.feed(_int(message.header(SEQ)), message)
        elif kind == END:
            error = message.header(ERROR)
            if error is None:
                self.receiver.feed(_int(message.header(SEQ)), None)
            else:
                self.receiver.fail(parse_error(error, self.server.service))
        elif kind == GRANT:
            self.sender.add(_int(message.header(CREDIT)))
        elif kind == CANCEL:
            self.cancelled = True
            cancel = RpcError(self.server.service, 499, "the client cancelled the stream")
            self.receiver.fail(cancel)
            self.sender.close(cancel)
            if self.task is not None:
                self.task.cancel()

    async def _grant(self, credits: int) -> None:
        frame_headers = frame(self.id, GRANT, **{CREDIT: str(credits)})
        await self.server.broker.publish(self.client, Message(b"", frame_headers))

    async def _send(self, value: Any) -> None:
        seq = await self.sender.acquire()
        message = self.server.encode(value, self.content_type)
        message.headers.update(frame(self.id, DATA, **{SEQ: str(seq)}))
        await self.server.broker.publish(self.client, message)

    async def _incoming(self) -> AsyncIterator[Any]:
        while True:
            message = await self.receiver.get()
            if message is None:
                return
            yield self._decode(message)

    def _decode(self, message: Message) -> Any:
        return self.server._decode(
            self.delivery, message, message.header(CONTENT_TYPE), self.endpoint
        )

    async def run(self, left: float | None) -> None:
        endpoint = self.endpoint
        deadline = asyncio.timeout(left)
        error: RpcError | None = None
        try:
            async with deadline:
                if endpoint.client_stream:
                    argument: Any = self._incoming()
                else:
                    first = await self.receiver.get()
                    if first is None:
                        raise RpcError(
                            SERVER_ID,
                            400,
                            f"the stream to {endpoint.name} ended before its request",
                        )
                    argument = self._decode(first)
                if endpoint.server_stream:
                    replies = endpoint.invoke(argument, self.delivery)
                    async with contextlib.aclosing(replies):
                        async for reply in replies:
                            await self._send(reply)
                else:
                    await self._send(await endpoint.invoke(argument, self.delivery))
        except asyncio.CancelledError:
            if self.cancelled:
                return  # the client gave up: nobody to tell
            if self.server.closing:
                error = RpcError(SERVER_ID, 503, f"{self.server.service} stopped during the stream")
                with contextlib.suppress(Exception):
                    await self.server.broker.publish(self.client, error_frame(self.id, error))
            raise
        except TimeoutError as exc:
            error = (
                RpcError(SERVER_ID, 408, f"the stream to {endpoint.name} passed its deadline")
                if deadline.expired()
                else self.server._failed(exc, self.delivery)
            )
        except RpcError as exc:
            error = exc
        except Exception as exc:
            error = self.server._failed(exc, self.delivery)
        if self.cancelled:
            return
        if error is not None:
            message = error_frame(self.id, error)
        else:
            message = Message(b"", frame(self.id, END, **{SEQ: str(self.sender.next_seq())}))
        try:
            await self.server.broker.publish(self.client, message)
        except Exception as exc:
            report_error(exc, self.delivery)


def _int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


class ServerRpc:
    """The RPC verbs of :class:`Server` (mixed in): go-micro's NewHandler and Handle."""

    service: str
    broker: Broker
    #: RPC calls (and streams) one server runs at once; more wait, holding the broker back.
    rpc_concurrency: int = 1024
    #: Messages a client may send ahead on a stream before it waits (flow control).
    stream_window: int = DEFAULT_WINDOW

    def _rpc(self) -> RpcServer:
        engine: RpcServer | None = self.__dict__.get("_rpc_engine")
        if engine is None:
            engine = self.__dict__["_rpc_engine"] = RpcServer(
                self.service,
                self.broker,
                max_concurrency=self.rpc_concurrency,
                window=self.stream_window,
            )
        return engine

    def new_handler(self, handler: object, *, name: str | None = None) -> RpcHandler:
        """Describe ``handler``'s public async methods as the endpoints ``Name.Method``.

        A method's first parameter annotation is the request type and its
        return annotation the response type (protobuf messages, dataclasses,
        or anything the JSON codec maps); an optional second parameter
        receives the :class:`Context` (metadata). An async generator
        (``-> AsyncIterator[Rsp]``) streams replies; a first parameter of type
        ``AsyncIterator[Req]`` receives a stream of requests.
        """
        return RpcHandler(handler, name=name)

    def handle(self, handler: RpcHandler) -> None:
        """Serve ``handler``'s endpoints (from :meth:`new_handler`) once the server starts."""
        if not isinstance(handler, RpcHandler):
            raise TypeError(
                f"handle() takes server.new_handler(obj), not {type(handler).__name__}: "
                "or use service.handle(obj)"
            )
        engine = self._rpc()
        engine.add(handler)
        if getattr(self, "_started", False) and not engine.started:
            task = asyncio.get_running_loop().create_task(engine.start())
            pending: set[asyncio.Task[None]] = self._pending  # type: ignore[attr-defined]
            pending.add(task)
            task.add_done_callback(pending.discard)

    @property
    def handlers(self) -> tuple[RpcHandler, ...]:
        """The handlers registered with :meth:`handle`."""
        engine: RpcServer | None = self.__dict__.get("_rpc_engine")
        return tuple(engine.handlers) if engine is not None else ()

    def _rebind_rpc(self, broker: Broker) -> None:
        """The server changed brokers (before it started): its RPC engine follows."""
        engine: RpcServer | None = self.__dict__.get("_rpc_engine")
        if engine is not None:
            engine.broker = broker

    async def _start_rpc(self) -> None:
        engine: RpcServer | None = self.__dict__.get("_rpc_engine")
        if engine is not None:
            await engine.start()

    async def _stop_rpc(self, timeout: float) -> None:
        engine: RpcServer | None = self.__dict__.get("_rpc_engine")
        if engine is not None:
            await engine.stop(timeout)
