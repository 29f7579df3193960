"""The receiving side of the http broker: the HTTP endpoint and one worker per subscription."""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..._broker import Handler, Subscriber
from ..._delivery import Delivery
from ..._mailbox import Mailbox, Overflow
from ..._message import Message
from ...registries import Service
from . import _wire

if TYPE_CHECKING:
    from ._broker import HttpBroker

Result = float | str | None
"""One message's outcome: ``_wire.ACK`` (None), a nack delay (float) or ``GONE``/``BUSY``."""


class _InboundDelivery(Delivery):
    """A message POSTed to a subscription: its verdict is the answer the publisher waits for."""

    __slots__ = ("_result",)

    def __init__(
        self, topic: str, message: Message, queue: str | None, attempt: int, result: Any
    ) -> None:
        super().__init__(topic, message, queue=queue, attempt=attempt)
        self._result: asyncio.Future[Result] = result

    def _answer(self, verdict: Result) -> None:
        if not self._result.done():
            self._result.set_result(verdict)

    async def on_ack(self) -> None:
        self._answer(_wire.ACK)

    async def on_nack(self, delay: float) -> None:
        self._answer(max(0.0, float(delay)))

    async def on_reject(self) -> None:
        # Given up here (dead-lettered or dropped): the publisher must stop sending it.
        self._answer(_wire.ACK)


class HttpSubscriber(Subscriber):
    """A subscription of the http broker: one registry node, one ordered worker.

    Messages POSTed to its node id wait in a bounded mailbox (``Overflow.REFUSE``:
    a full one answers 503, busy, and the publisher retries later) and are
    handled one at a time, in arrival order. Each HTTP answer waits for the
    handler's verdict, so the publisher learns whether the message was acked.
    """

    def __init__(
        self,
        broker: HttpBroker,
        topic: str,
        deliver: Handler,
        queue: str | None,
        auto_ack: bool,
        service: Service,
    ) -> None:
        super().__init__(topic, queue, auto_ack)
        self.id = service.nodes[0].id
        self.service = service
        self._broker = broker
        self._deliver = deliver
        self.limits = _wire.Limits.for_topic(
            topic, broker.capabilities.max_headers, broker.capabilities.max_header_bytes
        )
        self._active = True
        self._expiring: set[asyncio.Task[None]] = set()
        self._mailbox: Mailbox[_InboundDelivery] = Mailbox(
            self._handle,
            capacity=broker.max_inbox,
            overflow=Overflow.REFUSE,
            name=f"http subscription to {topic!r}",
        )

    @property
    def active(self) -> bool:
        return self._active

    def offer(self, topic: str, headers: dict[str, str], body: bytes, attempt: int) -> Any:
        """Queue one message; return the future of its result, or ``BUSY``/``GONE`` at once."""
        if not self._active:
            return _wire.GONE
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        delivery = _InboundDelivery(topic, Message(body, headers), self.queue, attempt, future)
        if not self._mailbox.offer(delivery):
            return _wire.GONE if self._mailbox.closed else _wire.BUSY
        return future

    async def _handle(self, delivery: _InboundDelivery) -> None:
        await self._deliver(delivery)
        if not delivery.settled:
            # Left for the application to settle later; an answer must come some day.
            asyncio.get_running_loop().call_later(self._broker.ack_timeout, self._expire, delivery)

    def _expire(self, delivery: _InboundDelivery) -> None:
        """The ack window is over: an unsettled delivery counts as a nack (a failed attempt)."""
        if not delivery.settled:
            task = asyncio.get_running_loop().create_task(delivery.nack())
            self._expiring.add(task)
            task.add_done_callback(self._expiring.discard)

    async def unsubscribe(self) -> None:
        if not self._active:
            return
        self._active = False
        await self._broker._remove(self)
        # Messages not yet handled go back to their publishers, for another member of the group.
        for pending in await self._mailbox.close():
            pending._answer(_wire.GONE)


def _text(status: int, message: str, **headers: str) -> web.Response:
    return web.Response(status=status, text=message + "\n", headers=headers or None)


class Budget:
    """The bytes of request bodies a server holds at once, over all its connections.

    A request holds its share from before its body is read until it is
    answered (its messages handled), so that what concurrent requests cost in
    memory stays near ``limit``. A request that would go beyond is answered
    503 (busy) and the publisher retries; one request is always let in,
    however large, so that a message of ``max_message_size`` gets through.
    """

    __slots__ = ("limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, n: int) -> bool:
        if self.used and self.used + n > self.limit:
            return False
        self.used += n
        return True

    def give(self, n: int) -> None:
        self.used -= n


class _TooLarge(Exception):
    pass


class _Busy(Exception):
    pass


class _Truncated(Exception):
    pass


def make_app(broker: HttpBroker) -> web.Application:
    """The aiohttp application of one broker: ``POST /?id=<node id>``, as go-micro's."""
    secret = broker.secret.encode() if broker.secret else None
    subscribers: Callable[[str], HttpSubscriber | None] = broker._subscribers.get
    read_timeout = broker.read_timeout
    max_request = broker.max_request_size
    budget = broker._budget

    async def handle(request: web.Request) -> web.StreamResponse:
        listener = broker._listener
        conn = listener.started(request.transport) if listener is not None else None
        try:
            return await serve(request)
        finally:
            if listener is not None:
                listener.finished(conn)

    async def serve(request: web.Request) -> web.StreamResponse:
        if secret is not None:
            given = request.headers.get("Authorization", "")
            if not given.startswith("Bearer ") or not hmac.compare_digest(
                given[7:].encode(), secret
            ):
                refused = _text(
                    401,
                    "missing or wrong shared secret: send 'Authorization: Bearer <secret>'",
                    **{"WWW-Authenticate": 'Bearer realm="microbroker"'},
                )
                # A client without the secret keeps no connection (nor its slot) open.
                refused.force_close()
                return refused
        node_id = request.query.get("id")
        if not node_id:
            return _text(400, "missing the subscription's node id: POST /?id=<node id>")
        sub = subscribers(node_id)
        if sub is None:
            return _text(404, f"no subscription with node id {node_id!r} here (it may have ended)")
        length = request.content_length
        if length is not None and length > max_request:
            return _too_large()
        held = [0]
        try:
            try:
                async with asyncio.timeout(read_timeout):
                    data = await _read(request, length, held)
            except TimeoutError:
                return _text(408, f"the request body did not arrive within {read_timeout}s")
            except _TooLarge:
                return _too_large()
            except _Busy:
                return _text(
                    503,
                    "the subscriber holds as many request bytes as it may (max_request_bytes); "
                    "retry later",
                    **{"Retry-After": "1"},
                )
            except _Truncated:
                return _text(400, "the request body ended before its Content-Length")
            if request.content_type == _wire.BATCH_TYPE:
                return await _batch(request, sub, data)
            return await _single(sub, data, node_id)
        finally:
            budget.give(held[0])

    async def _read(request: web.Request, length: int | None, held: list[int]) -> bytearray:
        """The body, within the budget: one buffer of its length, filled as chunks arrive."""
        content = request.content
        if length is not None:
            if not budget.take(length):
                raise _Busy
            held[0] = length
            data = bytearray(length)
            view = memoryview(data)
            pos = 0
            while pos < length:
                chunk = await content.readany()
                if not chunk:
                    raise _Truncated
                n = len(chunk)
                view[pos : pos + n] = chunk
                pos += n
            return data
        # No Content-Length (chunked): count the chunks as they come.
        data = bytearray()
        while chunk := await content.readany():
            if len(data) + len(chunk) > max_request:
                raise _TooLarge
            if not budget.take(len(chunk)):
                raise _Busy
            held[0] += len(chunk)
            data += chunk
        return data

    def _too_large() -> web.Response:
        refused = _text(
            413, f"the request is larger than this subscriber accepts ({max_request} bytes)"
        )
        refused.force_close()  # do not read the rest of a body this size
        return refused

    async def _single(sub: HttpSubscriber, data: bytearray, node_id: str) -> web.StreamResponse:
        # go-micro's single message: its Content-Type is application/json, but go-micro
        # reads the body whatever the header says, so do we.
        try:
            headers, body = _wire.decode_envelope(data, sub.limits)
        except _wire.WireError as exc:
            return _text(400, f"bad message: {exc}")
        del data  # the decoded message is all that is needed from here on
        topic = _topic(headers)
        if topic is None:
            return _text(400, f'bad message: no "{_wire.TOPIC_HEADER}" in "Header"')
        if topic != sub.topic:
            return _text(
                400, f"topic {topic!r} does not match the subscription's topic {sub.topic!r}"
            )
        result = sub.offer(topic, headers, body, 1)
        if not isinstance(result, str):
            result = await result
        if result is _wire.ACK:
            return web.Response(status=200)
        if result == _wire.GONE:
            return _text(404, f"subscription {node_id!r} ended before handling the message")
        if result == _wire.BUSY:
            return _text(
                503, "the subscription's inbox is full; retry later", **{"Retry-After": "1"}
            )
        return _text(500, "the handler did not accept the message (nack or error)")

    async def _batch(
        request: web.Request, sub: HttpSubscriber, data: bytearray
    ) -> web.StreamResponse:
        try:
            frames = _wire.decode_batch(data, sub.limits)
        except _wire.WireError as exc:
            return _text(400, f"bad batch: {exc}")
        del data
        results = []
        for _attempt, headers, _body in frames:
            if _topic(headers) != sub.topic:
                return _text(400, f"bad batch: a message is not on topic {sub.topic!r}")
        for attempt, headers, body in frames:
            results.append(sub.offer(sub.topic, headers, body, attempt))
        if len(results) == 1:
            # Nothing to stream for one message: a plain answer is cheaper on both ends.
            (only,) = results
            verdict = only if isinstance(only, str) else await only
            return web.Response(
                body=json.dumps([verdict]).encode() + b"\n", content_type="application/x-ndjson"
            )
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        # Answer results as they become known, in runs, so that a long batch behind a slow
        # handler keeps the connection alive and the publisher settles early ones early.
        ready: list[Result] = []
        for result in results:
            if isinstance(result, str):
                ready.append(result)
                continue
            if not result.done() and ready:
                await response.write(json.dumps(ready).encode() + b"\n")
                ready = []
            ready.append(await result)
        if ready:
            await response.write(json.dumps(ready).encode() + b"\n")
        await response.write_eof()
        return response

    app = web.Application(client_max_size=max_request)
    app.router.add_post("/", handle)
    return app


def _topic(headers: dict[str, str]) -> str | None:
    topic = headers.get(_wire.TOPIC_HEADER)
    if topic is not None:
        return topic
    for key, value in headers.items():
        if key.casefold() == "micro-topic":
            return value
    return None
