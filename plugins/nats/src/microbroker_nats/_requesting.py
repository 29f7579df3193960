"""Requests on core NATS: one reply inbox per connection, each reply handed to its caller.

nats-py's ``request()`` also shares one wildcard inbox between requests, but
each reply becomes a ``Msg`` (its headers parsed by nats-py), goes through the
inbox subscription's ``asyncio.Queue`` to that subscription's task and its
callback, and the caller waits in ``asyncio.wait_for``. Here the reader hands
the reply's raw parts to :meth:`Requests.on_reply`, which resolves the
caller's future in place, and the caller's timeout is one timer handle. The
request itself is written with the lean publish path
(:meth:`FastClient.write_publish`), falling back to nats-py's ``publish``
while not connected (it buffers during a reconnect, as nats-py's request
does).
"""

from __future__ import annotations

import asyncio
import itertools

import nats.errors

from microbroker import Message

from ._client import WRITE_DONE, WRITE_FALLBACK, WRITE_FORCE, FastClient, parse_header_lines

_STATUS_LINE = len(b"NATS/1.0\r\n")
_NO_RESPONDERS = b"503"


class Requests:
    """The requests of one :class:`FastClient` connection and their shared reply inbox.

    The inbox (``<inbox prefix>.<random>.*``) is subscribed at the first
    request; a request's token is a counter, unique for the connection's
    life. A reply that comes after its request gave up (timed out, cancelled)
    finds no caller and is dropped, as nats-py drops it.
    """

    __slots__ = ("_loop", "_nc", "_prefix", "_skip", "_tokens", "_waiting")

    def __init__(self, nc: FastClient) -> None:
        self._nc = nc
        self._loop = asyncio.get_running_loop()
        self._waiting: dict[bytes, asyncio.Future[Message]] = {}
        self._prefix = ""
        self._skip = 0
        self._tokens = itertools.count(1)

    async def _subscribe(self) -> None:
        prefix = self._nc.new_inbox() + "."
        # Set before the subscription's first await: nats-py queues the SUB command
        # before it, so every request written from now on reaches the server after it.
        self._prefix, self._skip = prefix, len(prefix)
        try:
            await self._nc.subscribe_replies(prefix + "*", self.on_reply)
        except BaseException:
            self._prefix, self._skip = "", 0
            raise

    async def request(
        self, subject: str, body: bytes, headers: dict[str, str] | None, timeout: float
    ) -> Message:
        """Send a request and return its reply; nats-py's errors, as its ``request()`` raises.

        ``nats.errors.NoRespondersError`` when the server says nobody
        subscribes, ``nats.errors.TimeoutError`` after ``timeout`` seconds.
        """
        if not self._prefix:
            await self._subscribe()
        token = next(self._tokens)
        key = b"%d" % token
        inbox = f"{self._prefix}{token}"
        loop = self._loop
        future: asyncio.Future[Message] = loop.create_future()
        waiting = self._waiting
        waiting[key] = future
        timer = loop.call_later(timeout, _expire, future)
        try:
            nc = self._nc
            state = nc.write_publish(subject, body, headers, inbox)
            if state != WRITE_DONE:
                if state == WRITE_FALLBACK:
                    await nc.publish(subject, body, reply=inbox, headers=headers)
                else:
                    await nc.kick(state == WRITE_FORCE)
            return await future
        finally:
            timer.cancel()
            del waiting[key]

    def on_reply(self, subject: bytes, body: bytes, headers: bytes | None) -> None:
        """A message on the inbox (called by the reader): the reply its caller waits for."""
        future = self._waiting.get(subject[self._skip :])
        if future is None or future.done():
            return
        if headers is None:
            future.set_result(Message(body, {}))
        elif len(headers) <= 8 or headers[8] != 32:  # "NATS/1.0\r\n": headers, no status
            future.set_result(Message(body, parse_header_lines(headers[_STATUS_LINE:])))
        elif headers[9:12] == _NO_RESPONDERS:
            future.set_exception(nats.errors.NoRespondersError())
        else:  # "NATS/1.0 408 Request Timeout\r\n...": a status, for the caller to read
            future.set_result(Message(body, _status_headers(headers)))


def _status_headers(block: bytes) -> dict[str, str]:
    """The headers of a status message (``NATS/1.0 408 Request Timeout``), as nats-py reads them."""
    first, _, rest = block.partition(b"\r\n")
    status = first[9:].decode("utf-8", "replace").strip()
    code, _, description = status.partition(" ")
    headers = parse_header_lines(rest)
    headers["Status"] = code
    if description:
        headers["Description"] = description.strip()
    return headers


def _expire(future: asyncio.Future[Message]) -> None:
    if not future.done():
        future.set_exception(nats.errors.TimeoutError())
