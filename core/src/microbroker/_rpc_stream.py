"""RPC streams: frames, flow control (credits) and the client's :class:`Stream`.

A stream is a conversation between one client and the one server instance
that accepted it. Each frame is a broker message on the peer's inbox topic,
tagged ``Micro-Stream: <id>`` and ``Micro-Frame``:

- ``open`` (client to the service topic): starts the stream, grants the
  server ``Micro-Credit`` data frames and names the client's inbox in
  ``Micro-Reply-To``;
- ``credit``: grants the peer ``Micro-Credit`` more data frames; the server's
  first one accepts the stream and names its own inbox in ``Micro-Reply-To``;
- ``data``: one message, numbered by ``Micro-Seq`` (0, 1, ...) per direction,
  so that a broker that reorders cannot reorder a stream;
- ``end``: no more data from this side (numbered too, so it cannot overtake
  data); with ``Micro-Error`` it ends the stream with that error;
- ``cancel``: the peer gives up; the other side stops at once.

A sender may have at most as many data frames unconsumed as the receiver
granted: the receiver grants again as its application consumes, so that a
fast producer waits for a slow consumer instead of filling memory.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, Self, TypeVar

from . import codecs
from ._errors import MicrobrokerError, RpcError, RpcTimeout
from ._headers import CONTENT_TYPE, ERROR, ID
from ._message import Message
from ._rpc import (
    CANCEL,
    CLIENT_ID,
    CREDIT,
    DATA,
    END,
    FRAME,
    GRANT,
    SEQ,
    STREAM,
    Request,
    error_header,
)

if TYPE_CHECKING:
    from ._rpc_client import RpcClient

T = TypeVar("T")


def frame(stream_id: str, kind: str, **headers: str) -> dict[str, str]:
    """The headers of a frame of ``kind`` on stream ``stream_id``."""
    result = {STREAM: stream_id, FRAME: kind}
    for name, value in headers.items():
        result[name] = value
    return result


class Receiver:
    """One direction's incoming data frames: put back in order, consumed with credits granted."""

    __slots__ = (
        "_consumed",
        "_early",
        "_ended",
        "_error",
        "_grant",
        "_next",
        "_queue",
        "_waiter",
        "window",
    )

    def __init__(self, window: int, grant: Callable[[int], Awaitable[None]]) -> None:
        self._grant = grant
        # Granted back once half the window is consumed: fewer credit frames than one per item.
        self._consumed = 0
        self._next = 0
        self._early: dict[int, Message | None] = {}
        self._queue: deque[Message | None] = deque()
        self._ended = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self.window = window

    @property
    def finished(self) -> bool:
        """Whether the end (or an error) has been received."""
        return self._ended or self._error is not None

    def feed(self, seq: int, message: Message | None) -> None:
        """Take data frame ``seq`` (``None`` for the end frame), in any order."""
        if seq < self._next or self.finished:
            return  # a duplicate (at-least-once brokers) or after the end
        self._early[seq] = message
        early = self._early
        while self._next in early:
            item = early.pop(self._next)
            self._next += 1
            self._queue.append(item)
        self._wake()

    def fail(self, error: BaseException) -> None:
        """End the stream with ``error``: the next :meth:`get` raises it."""
        if self._error is None:
            self._error = error
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self, timeout: float | None = None) -> Message | None:
        """The next data message in order, or ``None`` at the end; raises the stream's error."""
        while not self._queue:
            if self._error is not None:
                raise self._error
            if self._ended:
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(timeout):
                    await self._waiter
            finally:
                self._waiter = None
        item = self._queue.popleft()
        if item is None:
            self._ended = True
            self._queue.clear()
            return None
        self._consumed += 1
        if self._consumed >= max(1, self.window // 2):
            granted, self._consumed = self._consumed, 0
            await self._grant(granted)
        return item


class Sender:
    """One direction's outgoing data frames: numbered, and held back without credit."""

    __slots__ = ("_closed", "_credits", "_waiter", "seq")

    def __init__(self, credits: int = 0) -> None:
        self._credits = credits
        self._waiter: asyncio.Future[None] | None = None
        self._closed: BaseException | None = None
        self.seq = 0

    def add(self, credits: int) -> None:
        """The peer granted ``credits`` more data frames."""
        self._credits += credits
        self._wake()

    def close(self, error: BaseException) -> None:
        """No more sending: a waiting :meth:`acquire` raises ``error``."""
        if self._closed is None:
            self._closed = error
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def acquire(self, timeout: float | None = None) -> int:
        """Wait for a credit, spend it and return the next sequence number."""
        while self._credits <= 0 or self._closed is not None:
            if self._closed is not None:
                raise self._closed
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(timeout):
                    await self._waiter
            finally:
                self._waiter = None
        self._credits -= 1
        return self.next_seq()

    def next_seq(self) -> int:
        seq = self.seq
        self.seq = seq + 1
        return seq


class Stream(Generic[T]):
    """A client's side of a stream: go-micro's ``client.Stream``. Made by :meth:`Client.stream`.

    Iterate it (``async for reply in stream``) or call :meth:`recv` for the
    server's messages; :meth:`send` sends one (bidirectional streams) and
    :meth:`close_send` says there are no more. :meth:`close` (or leaving
    ``async with``) ends the stream; before the server finished, that cancels
    the handler on the server. A server error is raised as :class:`RpcError`
    by the next :meth:`recv`.
    """

    def __init__(
        self,
        client: RpcClient,
        request: Request,
        response_type: type[T] | Any,
        stream_id: str,
        window: int,
        deadline: float | None,
    ) -> None:
        self.request = request
        self.response_type = response_type
        self.id = stream_id
        self._client = client
        self._deadline = deadline
        #: The server instance's inbox, known once it accepted the stream.
        self.peer: str | None = None
        self.accepted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.receiver = Receiver(window, self._grant)
        self.sender = Sender()
        self._send_closed = False
        self._closed = False

    # Frames from the server, routed here by the client's inbox. --------------------

    def on_frame(self, kind: str, message: Message) -> None:
        if kind == GRANT:
            if self.peer is None:
                self.peer = message.header("Micro-Reply-To")
                if not self.accepted.done():
                    self.accepted.set_result(None)
            self.sender.add(_int(message.header(CREDIT)))
        elif kind == DATA:
            self.receiver.feed(_int(message.header(SEQ)), message)
        elif kind == END:
            error = message.header(ERROR)
            if error is not None:
                self._fail(self._client.error_from(error))
            else:
                self.receiver.feed(_int(message.header(SEQ)), None)
                # The server has finished: it takes no more messages.
                self.sender.close(MicrobrokerError(self._ended_text()))
        elif kind == CANCEL:
            self._fail(RpcError(self.request.service, 499, "the server cancelled the stream"))

    def _fail(self, error: RpcError) -> None:
        if not self.accepted.done():
            self.accepted.set_exception(error)
            # Retrieved here so that asyncio does not log it when nobody waits any more.
            self.accepted.exception()
        self.receiver.fail(error)
        self.sender.close(error)

    def _ended_text(self) -> str:
        return f"the stream to {self.request.service} {self.request.endpoint} has ended"

    # The public API. ------------------------------------------------------------

    def _remaining(self) -> float | None:
        if self._deadline is None:
            return None
        return self._deadline - asyncio.get_running_loop().time()

    async def send(self, message: Any) -> None:
        """Send ``message`` to the server, waiting while the server's window is full."""
        if self._closed or self._send_closed:
            raise MicrobrokerError(f"send() after close_send() or close(): {self._ended_text()}")
        try:
            seq = await self.sender.acquire(self._remaining())
        except TimeoutError:
            raise self._timed_out() from None
        content_type = self.request.content_type
        body = self._client.codec(content_type).encode(message)
        headers = frame(self.id, DATA, **{SEQ: str(seq), CONTENT_TYPE: content_type})
        await self._client.send_frame(self.peer, Message(body, headers))

    async def close_send(self) -> None:
        """Tell the server no more messages come (it ends its request iterator)."""
        if self._send_closed or self._closed or self.receiver.finished:
            self._send_closed = True
            return
        self._send_closed = True
        seq = self.sender.next_seq()
        await self._client.send_frame(
            self.peer, Message(b"", frame(self.id, END, **{SEQ: str(seq)}))
        )

    async def recv(self) -> T:
        """The server's next message; raises :class:`StopAsyncIteration` at the end.

        Raises :class:`RpcError` when the handler failed and :class:`RpcTimeout`
        when the stream's deadline passed.
        """
        if self._closed and not self.receiver.finished:
            raise MicrobrokerError(f"recv() after close(): {self._ended_text()}")
        try:
            message = await self.receiver.get(self._remaining())
        except TimeoutError:
            error = self._timed_out()
            await self.close()
            raise error from None
        if message is None:
            self._client.forget(self)
            raise StopAsyncIteration
        content_type = message.header(CONTENT_TYPE) or codecs.content_type_for_type(
            self.response_type
        )
        value: T = self._client.decode(message, content_type, self.response_type, self.request)
        return value

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> T:
        return await self.recv()

    async def close(self) -> None:
        """End the stream; cancel the handler on the server unless it has finished."""
        if self._closed:
            return
        self._closed = True
        error = MicrobrokerError(f"the stream was closed: {self._ended_text()}")
        self.sender.close(error)
        finished = self.receiver.finished
        self.receiver.fail(error)
        self._client.forget(self)
        if not finished and self.peer is not None:
            await self._client.send_frame(self.peer, Message(b"", frame(self.id, CANCEL)))

    def _timed_out(self) -> RpcTimeout:
        return RpcTimeout(
            CLIENT_ID,
            f"the stream to {self.request.service} {self.request.endpoint} passed its deadline",
        )

    async def _grant(self, credits: int) -> None:
        if self.peer is not None and not self._closed:
            await self._client.send_frame(
                self.peer, Message(b"", frame(self.id, GRANT, **{CREDIT: str(credits)}))
            )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return (
            f"<Stream {self.request.service} {self.request.endpoint} id={self.id!r} "
            f"peer={self.peer!r}>"
        )


def _int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


def error_frame(stream_id: str, error: RpcError, request_id: str | None = None) -> Message:
    """An ``end`` frame that ends the stream with ``error``."""
    headers = frame(stream_id, END, **{ERROR: error_header(error)})
    if request_id is not None:
        headers[ID] = request_id
    return Message(b"", headers)
