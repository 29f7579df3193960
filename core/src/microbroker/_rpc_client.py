"""The calling side of RPC: ``Client.new_request``, ``Client.call`` and ``Client.stream``."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar, overload

from . import codecs
from ._broker import Broker, Subscriber
from ._delivery import Delivery
from ._errors import DecodeError, MicrobrokerError, PublishError, RpcError, RpcTimeout
from ._headers import CONTENT_TYPE, ENDPOINT, ERROR, ID, SERVICE, new_message_id
from ._message import Message
from ._rpc import (
    CLIENT_ID,
    CREDIT,
    DEADLINE,
    DEFAULT_TIMEOUT,
    DEFAULT_WINDOW,
    FRAME,
    METHOD,
    OPEN,
    REPLY_TO,
    RPC_RESERVED,
    STREAM,
    Request,
    RequestReply,
    deadline_header,
    inbox_topic,
    parse_error,
    service_topic,
)
from ._rpc_stream import Stream, frame

if TYPE_CHECKING:
    from ._client import Client

T = TypeVar("T")

#: Codes worth another attempt when the caller asked for retries: the request may not have
#: reached a handler (timeout, no instance).
RETRYABLE = frozenset({408, 503})


class RpcClient:
    """The RPC machinery of one :class:`Client`: its inbox, pending calls and open streams."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.broker: Broker = client.broker
        self.id = os.urandom(8).hex()
        self.inbox = inbox_topic(self.id)
        self._inbox_sub: Subscriber | None = None
        self._inbox_lock = asyncio.Lock()
        self._pending: dict[str, asyncio.Future[Message]] = {}
        self._streams: dict[str, Stream[Any]] = {}
        self._native = isinstance(self.broker, RequestReply)

    def codec(self, content_type: str) -> codecs.Codec:
        return self.client.codec(content_type)

    async def ensure_inbox(self) -> None:
        """Subscribe to this client's reply topic (again, after the broker reconnected)."""
        sub = self._inbox_sub
        if sub is not None and sub.active and self.broker.connected:
            return
        async with self._inbox_lock:
            sub = self._inbox_sub
            if sub is not None and sub.active and self.broker.connected:
                return
            self._inbox_sub = await self.broker.subscribe(self.inbox, self._on_reply)

    async def _on_reply(self, delivery: Delivery) -> None:
        message = delivery.message
        stream_id = message.header(STREAM)
        if stream_id is not None:
            stream = self._streams.get(stream_id)
            if stream is not None:
                stream.on_frame(message.header(FRAME) or "", message)
            return
        request_id = message.header(ID)
        if request_id is None:
            return
        waiter = self._pending.get(request_id)
        # A reply after its call gave up finds no waiter: it is dropped, as go-micro does.
        if waiter is not None and not waiter.done():
            waiter.set_result(message)

    def request_message(
        self,
        request: Request,
        metadata: Mapping[str, str] | None,
        timeout: float | None,
    ) -> Message:
        body = self.codec(request.content_type).encode(request.body)
        headers: dict[str, str] = {}
        if metadata:
            for key, value in metadata.items():
                if key.casefold() not in RPC_RESERVED:
                    headers[key] = value
        headers[CONTENT_TYPE] = request.content_type
        headers[SERVICE] = request.service
        headers[ENDPOINT] = request.endpoint
        headers[METHOD] = request.endpoint
        headers[ID] = new_message_id()
        if timeout is not None:
            headers[DEADLINE] = deadline_header(timeout)
        return Message(body, headers)

    async def call(
        self,
        request: Request,
        response_type: Any,
        *,
        timeout: float,
        retries: int,
        metadata: Mapping[str, str] | None,
    ) -> Any:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if retries < 0:
            raise ValueError("retries cannot be negative")
        attempt = 0
        while True:
            try:
                message = self.request_message(request, metadata, timeout)
                if self._native:
                    # Awaited here rather than through a helper: one coroutine less per call.
                    try:
                        reply = await self.broker.request(  # type: ignore[attr-defined]
                            service_topic(request.service), message, timeout=timeout
                        )
                    except TimeoutError as exc:
                        raise self._timeout(request, timeout) from exc
                    except LookupError as exc:
                        raise self._nobody_serves(request) from exc
                else:
                    reply = await self._via_inbox(request, message, timeout)
                error = reply.header(ERROR)
                if error is not None:
                    raise parse_error(error, request.service)
                content_type = reply.header(CONTENT_TYPE) or codecs.content_type_for_type(
                    response_type
                )
                return self.decode(reply, content_type, response_type, request)
            except RpcError as exc:
                if attempt >= retries or exc.code not in RETRYABLE:
                    raise
                attempt += 1
                # A short pause when no instance serves: one may be starting.
                if exc.code == 503:
                    await asyncio.sleep(min(0.05 * 2**attempt, 1.0))

    def _nobody_serves(self, request: Request) -> RpcError:
        return RpcError(CLIENT_ID, 503, f"no instance of service {request.service!r} is serving")

    async def _via_inbox(self, request: Request, message: Message, timeout: float) -> Message:
        """The round trip on a broker without request/reply: this client's inbox, a Future."""
        topic = service_topic(request.service)
        await self.ensure_inbox()
        request_id = message.headers[ID]
        message.headers[REPLY_TO] = self.inbox
        waiter: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = waiter
        try:
            await self._publish(request, topic, message)
            async with asyncio.timeout(timeout):
                return await waiter
        except TimeoutError as exc:
            raise self._timeout(request, timeout) from exc
        finally:
            del self._pending[request_id]

    async def _publish(self, request: Request, topic: str, message: Message) -> None:
        try:
            await self.broker.publish(topic, message)
        except PublishError as exc:
            # A broker that knows nobody subscribes (http) says so at once: no instance serves.
            raise RpcError(
                CLIENT_ID, 503, f"cannot reach service {request.service!r}: {exc}"
            ) from exc

    def _timeout(self, request: Request, timeout: float) -> RpcTimeout:
        return RpcTimeout(
            CLIENT_ID,
            f"call to {request.service} {request.endpoint} timed out after {timeout}s: "
            "is an instance of the service running?",
        )

    def decode(self, message: Message, content_type: str, into: Any, request: Request) -> Any:
        try:
            return self.codec(content_type).decode(message.body, into)
        except Exception as exc:
            raise DecodeError(
                topic=f"{request.service} {request.endpoint} (reply)",
                content_type=content_type,
                expected=into,
                cause=exc,
            ) from exc

    def error_from(self, text: str) -> RpcError:
        return parse_error(text, CLIENT_ID)

    async def open(
        self,
        request: Request,
        response_type: Any,
        *,
        timeout: float | None,
        open_timeout: float,
        window: int,
        metadata: Mapping[str, str] | None,
    ) -> Stream[Any]:
        if window < 1:
            raise ValueError("window must be at least 1")
        await self.ensure_inbox()
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        stream_id = f"{self.id}-{new_message_id()}"
        stream: Stream[Any] = Stream(self, request, response_type, stream_id, window, deadline)
        message = self.request_message(request, metadata, timeout)
        message.body = b""
        message.headers.update(
            frame(stream_id, OPEN, **{CREDIT: str(window), REPLY_TO: self.inbox})
        )
        self._streams[stream_id] = stream
        try:
            await self._publish(request, service_topic(request.service), message)
            wait = open_timeout if timeout is None else min(open_timeout, timeout)
            try:
                async with asyncio.timeout(wait):
                    await asyncio.shield(stream.accepted)
            except TimeoutError as exc:
                raise RpcTimeout(
                    CLIENT_ID,
                    f"no instance of {request.service} accepted a stream to {request.endpoint} "
                    f"within {wait}s: is one running?",
                ) from exc
            if request.body is not None:
                await stream.send(request.body)
        except BaseException:
            await stream.close()
            raise
        return stream

    async def send_frame(self, peer: str | None, message: Message) -> None:
        if peer is None:
            raise MicrobrokerError("the stream has not been accepted by a server yet")
        await self.broker.publish(peer, message)

    def forget(self, stream: Stream[Any]) -> None:
        self._streams.pop(stream.id, None)


class ClientRpc:
    """The RPC verbs of :class:`Client` (mixed in): go-micro's NewRequest, Call and Stream."""

    broker: Broker
    content_type: str | None
    #: Seconds a call waits for its reply unless told otherwise (go-micro's default, 5).
    request_timeout: float = DEFAULT_TIMEOUT

    def _rpc(self) -> RpcClient:
        engine: RpcClient | None = self.__dict__.get("_rpc_engine")
        if engine is None or engine.broker is not self.broker:
            engine = self.__dict__["_rpc_engine"] = RpcClient(self)  # type: ignore[arg-type]
        return engine

    def new_request(
        self, service: str, endpoint: str, request: Any, *, content_type: str | None = None
    ) -> Request:
        """Describe a call of ``endpoint`` (``"Handler.Method"``) on ``service``.

        The content type defaults to the client's, else protobuf for protobuf
        messages and JSON for the rest. For a stream, ``request`` is the first
        message sent (``None`` sends none).
        """
        if not service or not isinstance(service, str):
            raise ValueError(f"the service name must be a non-empty str, not {service!r}")
        if not endpoint or "." not in endpoint:
            raise ValueError(f"the endpoint is 'Handler.Method', not {endpoint!r}")
        if content_type is None:
            content_type = self.content_type or codecs.content_type_for(request)
        return Request(service, endpoint, request, content_type)

    @overload
    async def call(
        self,
        request: Request,
        response_type: type[T],
        /,
        *,
        timeout: float | None = None,
        retries: int = 0,
        metadata: Mapping[str, str] | None = None,
    ) -> T: ...

    @overload
    async def call(
        self,
        service: str,
        endpoint: str,
        request: Any,
        response_type: type[T],
        /,
        *,
        timeout: float | None = None,
        retries: int = 0,
        metadata: Mapping[str, str] | None = None,
    ) -> T: ...

    async def call(
        self,
        *args: Any,
        timeout: float | None = None,
        retries: int = 0,
        metadata: Mapping[str, str] | None = None,
    ) -> Any:
        """Call an endpoint and return its reply decoded into ``response_type``.

        Either ``call(request, response_type)`` with a request from
        :meth:`new_request`, or ``call(service, endpoint, request, response_type)``.

        :param timeout: seconds to wait for the reply (default
            :attr:`request_timeout`); the deadline travels with the request and
            the server drops the work once it has passed.
        :param retries: further attempts after a timeout or when no instance
            serves (codes 408 and 503). None by default: a retried call may run
            twice on the server.
        :param metadata: headers for the handler (its ``ctx.metadata``).
        :raises RpcError: the handler raised, or the endpoint is unknown.
        :raises RpcTimeout: no reply within ``timeout``.
        """
        request, response_type = _call_args(self, args)
        return await self._rpc().call(
            request,
            response_type,
            timeout=self.request_timeout if timeout is None else timeout,
            retries=retries,
            metadata=metadata,
        )

    @overload
    async def stream(
        self,
        request: Request,
        response_type: type[T],
        *,
        timeout: float | None = None,
        open_timeout: float | None = None,
        window: int = DEFAULT_WINDOW,
        metadata: Mapping[str, str] | None = None,
    ) -> Stream[T]: ...

    @overload
    async def stream(
        self,
        request: Request,
        *,
        timeout: float | None = None,
        open_timeout: float | None = None,
        window: int = DEFAULT_WINDOW,
        metadata: Mapping[str, str] | None = None,
    ) -> Stream[Any]: ...

    async def stream(
        self,
        request: Request,
        response_type: Any = Any,
        *,
        timeout: float | None = None,
        open_timeout: float | None = None,
        window: int = DEFAULT_WINDOW,
        metadata: Mapping[str, str] | None = None,
    ) -> Stream[Any]:
        """Open a stream to ``request``'s endpoint; the server's messages are ``response_type``.

        Returns once an instance accepted the stream. ``request.body``, unless
        ``None``, is sent as the first message (the request of a server
        streaming endpoint).

        :param timeout: seconds the whole stream may last (``None``: no limit);
            the deadline travels with it and the server stops the handler then.
        :param open_timeout: seconds to wait for an instance to accept the
            stream (default :attr:`request_timeout`).
        :param window: messages the server may send ahead of what has been
            read (flow control).
        :raises RpcTimeout: no instance accepted the stream in time.
        :raises RpcError: the endpoint is unknown.
        """
        return await self._rpc().open(
            request,
            response_type,
            timeout=timeout,
            open_timeout=self.request_timeout if open_timeout is None else open_timeout,
            window=window,
            metadata=metadata,
        )


def _call_args(client: ClientRpc, args: tuple[Any, ...]) -> tuple[Request, Any]:
    if len(args) == 2 and isinstance(args[0], Request):
        return args[0], args[1]
    if len(args) == 4 and isinstance(args[0], str):
        return client.new_request(args[0], args[1], args[2]), args[3]
    raise TypeError(
        "call() takes (request, response_type) or (service, endpoint, request, response_type)"
    )
