"""Accepting connections for the http broker's server: a bounded number, and calm under a flood.

asyncio's own accept loop (``loop.create_server``) accepts whatever comes:
1,100 idle connections to a process limited to 1,024 file descriptors take
every descriptor, and then ``accept()`` fails with EMFILE in a loop that logs
a traceback per attempt (megabytes a minute) while the registry renewals and
the outgoing deliveries of the same process fail for want of a descriptor.
So the server accepts by itself:

- at most ``max_connections`` connections are open (by default half the
  process's open-file limit, at most 1,024), which keeps the other half of
  the descriptors for registry renewals, outgoing deliveries and the
  application;
- at that bound a new connection takes the place of the oldest one that has
  not sent a complete request head yet, or else of the one idle the longest;
  when every connection is in the middle of a request it is refused (closed);
- a connection that sends no complete request head (TLS handshake included)
  within ``open_timeout`` seconds is closed (a slowloris);
- when ``accept()`` fails for want of descriptors or memory (the bound set
  higher than the open-file limit allows, or the application holding many),
  the bound is lowered for a while to leave a reserve of descriptors free,
  connections that sent nothing are closed down to it, accepting pauses with
  a growing delay, and one warning is logged per interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any

from ._reports import Throttled

logger = logging.getLogger("microbroker.broker.http")

DEFAULT_MAX_CONNECTIONS = 1024
"""The bound on open connections unless the open-file limit is lower (then half of it)."""

_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_ACCEPTS_PER_WAKEUP = 64
_PAUSE_FIRST = 0.05
_PAUSE_MOST = 2.0
_BACKLOG = 128
# Descriptors kept free once accept() met EMFILE: registry renewals, outgoing deliveries.
_RESERVE = 32
# Seconds the lowered bound holds before the configured one is tried again.
_LOWERED_FOR = 60.0
# Seconds a connection stays idle before it may make room: its last answer may still be
# on its way out (the handler has returned, aiohttp writes the response after).
_IDLE_GRACE = 1.0


def default_max_connections() -> int:
    """Half the soft ``RLIMIT_NOFILE`` (where there is one), at most 1,024 and at least 8."""
    try:
        import resource
    except ImportError:  # not POSIX
        return DEFAULT_MAX_CONNECTIONS
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return DEFAULT_MAX_CONNECTIONS
    return max(8, min(DEFAULT_MAX_CONNECTIONS, soft // 2))


class Connection:
    """One accepted connection: its state for the bound, the eviction order and the timeouts."""

    __slots__ = ("busy", "closed", "idle_since", "listener", "task", "timer", "transport", "used")

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.transport: asyncio.BaseTransport | None = None
        self.task: asyncio.Task[Any] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.used = False
        self.busy = 0
        self.closed = False
        self.idle_since = 0.0

    def drop(self) -> None:
        """Close at once: nothing to flush for a connection that is not in a request."""
        if self.transport is not None:
            abort = getattr(self.transport, "abort", None)
            if abort is not None:
                abort()
            else:
                self.transport.close()
        elif self.task is not None:
            self.task.cancel()  # still in its TLS handshake: connect_accepted_socket closes it


class _Guard(asyncio.Protocol):
    """Sits between a transport and aiohttp's protocol, to learn when the connection ends."""

    __slots__ = ("conn", "inner")

    def __init__(self, conn: Connection, inner: asyncio.Protocol) -> None:
        self.conn = conn
        self.inner = inner

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.conn.listener._made(self.conn, transport)
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.listener._lost(self.conn)
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class Listener:
    """A listening socket that accepts within ``max_connections``; see the module docstring."""

    def __init__(
        self,
        factory: Callable[[], asyncio.Protocol],
        *,
        tls: ssl.SSLContext | None,
        max_connections: int,
        open_timeout: float,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self._factory = factory
        self._tls = tls
        self.max_connections = max_connections
        self.limit = max_connections
        """The bound in force: ``max_connections``, or lower for a while after EMFILE."""
        self._lowered_at = 0.0
        self.open_timeout = open_timeout
        self.open = 0
        """Connections accepted and not closed yet."""
        self.refused = 0
        """Connections closed at once because every slot was in a request."""
        self.evicted = 0
        """Connections closed to make room (silent or idle ones) or for sending nothing."""
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Insertion-ordered: the oldest first. New: no complete request head yet.
        self._new: dict[Connection, None] = {}
        self._idle: dict[Connection, None] = {}
        self._by_transport: dict[asyncio.BaseTransport, Connection] = {}
        self._pause = _PAUSE_FIRST
        self._resume: asyncio.TimerHandle | None = None
        self._warn = Throttled(logger)
        self.address: tuple[str, int] = ("", 0)

    # Listening -----------------------------------------------------------------------

    def start(self, host: str, port: int) -> tuple[str, int]:
        """Bind and listen on ``host:port`` (port 0: a free one); return the bound address."""
        loop = asyncio.get_running_loop()
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        family, kind, proto, _name, sockaddr = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            if hasattr(socket, "SO_REUSEADDR") and socket.SO_REUSEADDR:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(sockaddr)
            sock.listen(_BACKLOG)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._loop = loop
        bound = sock.getsockname()
        self.address = (str(bound[0]), int(bound[1]))
        loop.add_reader(sock.fileno(), self._accept)
        return self.address

    def close(self) -> None:
        """Stop listening. Open connections are the server's to close (its shutdown does)."""
        sock, self._sock = self._sock, None
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        if sock is not None and self._loop is not None:
            self._loop.remove_reader(sock.fileno())
            sock.close()
        for conn in list(self._new):
            conn.drop()

    def _accept(self) -> None:
        sock = self._sock
        if sock is None:
            return
        for _ in range(_ACCEPTS_PER_WAKEUP):
            try:
                raw, _peer = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                if exc.errno in _OUT_OF_RESOURCES:
                    self._out_of_resources(exc)
                else:
                    self._warn.warning(
                        "accept-error", "http broker could not accept a connection: %s", exc
                    )
                return
            self._pause = _PAUSE_FIRST
            self._admit(raw)

    def _out_of_resources(self, exc: OSError) -> None:
        """No descriptor (or memory) for a new connection: pause accepting, say so once."""
        assert self._loop is not None
        assert self._sock is not None
        self._loop.remove_reader(self._sock.fileno())
        delay = self._pause
        self._pause = min(self._pause * 2, _PAUSE_MOST)
        self._resume = self._loop.call_later(delay, self._resumed)
        # What is open now is what the process can afford: keep a reserve below it, and give
        # it back at once from the connections that have sent nothing (the cheapest to lose).
        self.limit = max(1, min(self.limit, self.open - _RESERVE))
        self._lowered_at = self._loop.time()
        while self.open > self.limit and self._new:
            self._evict(next(iter(self._new)))
        self._warn.warning(
            "out-of-resources",
            "http broker on %s:%d cannot accept connections: %s (%d open, max_connections=%d); "
            "keeping at most %d for %.0fs, accepting again in %.2fs. Raise the open-file limit "
            "(ulimit -n) or lower max_connections",
            *self.address,
            exc.strerror or exc,
            self.open,
            self.max_connections,
            self.limit,
            _LOWERED_FOR,
            delay,
        )

    def _resumed(self) -> None:
        self._resume = None
        if self._sock is not None and self._loop is not None:
            self._loop.add_reader(self._sock.fileno(), self._accept)
            self._accept()

    # Connections ---------------------------------------------------------------------

    def _admit(self, raw: socket.socket) -> None:
        if self.limit < self.max_connections:
            assert self._loop is not None
            if self._loop.time() - self._lowered_at > _LOWERED_FOR:
                self.limit = self.max_connections
        if self.open >= self.limit:
            if not self._make_room():
                self.refused += 1
                raw.close()
                self._warn.warning(
                    "full",
                    "http broker on %s:%d refused a connection: all %d connections it keeps "
                    "(max_connections=%d) are in a request",
                    *self.address,
                    self.limit,
                    self.max_connections,
                )
                return
            self._warn.warning(
                "room",
                "http broker on %s:%d has %d connections open (max_connections=%d): closing "
                "the oldest that sent no request (or idle the longest) to let new ones in",
                *self.address,
                self.limit,
                self.max_connections,
            )
        loop = self._loop
        assert loop is not None
        conn = Connection(self)
        self.open += 1
        self._new[conn] = None
        conn.timer = loop.call_later(self.open_timeout, self._expire, conn)
        factory = self._factory
        tls = self._tls
        conn.task = loop.create_task(
            self._connect(conn, raw, lambda: _Guard(conn, factory()), tls),
            name="microbroker-http-accept",
        )

    async def _connect(
        self,
        conn: Connection,
        raw: socket.socket,
        factory: Callable[[], asyncio.Protocol],
        tls: ssl.SSLContext | None,
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            if tls is None:
                await loop.connect_accepted_socket(factory, raw)
            else:
                await loop.connect_accepted_socket(
                    factory, raw, ssl=tls, ssl_handshake_timeout=self.open_timeout
                )
        except asyncio.CancelledError:
            # Closed by us (room made, open_timeout, shutdown): the socket is closed.
            self._lost(conn)
        except (OSError, ssl.SSLError, TimeoutError, ValueError) as exc:
            # A handshake that failed is the client's problem; the server goes on, and says
            # why when TLS refused it (the client may only see its connection reset).
            if isinstance(exc, ssl.SSLError) and not isinstance(
                exc, ssl.SSLEOFError | ssl.SSLZeroReturnError | ssl.SSLSyscallError
            ):
                self._warn.warning(
                    "tls",
                    "http broker on %s:%d refused a TLS handshake: %s",
                    *self.address,
                    exc.reason or exc,
                )
            else:
                logger.debug("http broker: a connection failed before its first request: %r", exc)
            with contextlib.suppress(OSError):
                raw.close()
            self._lost(conn)
        finally:
            conn.task = None

    def _made(self, conn: Connection, transport: asyncio.BaseTransport) -> None:
        conn.transport = transport
        if conn.closed:  # evicted while its handshake finished
            conn.drop()
            return
        self._by_transport[transport] = conn

    def _lost(self, conn: Connection) -> None:
        if conn.closed:
            return
        conn.closed = True
        self.open -= 1
        self._new.pop(conn, None)
        self._idle.pop(conn, None)
        if conn.transport is not None:
            self._by_transport.pop(conn.transport, None)
        if conn.timer is not None:
            conn.timer.cancel()
            conn.timer = None

    def _make_room(self) -> bool:
        """Close the oldest silent connection, else the one idle the longest; False if none."""
        if self._new:
            self._evict(next(iter(self._new)))
            return True
        if self._idle:
            oldest = next(iter(self._idle))
            assert self._loop is not None
            if self._loop.time() - oldest.idle_since >= _IDLE_GRACE:
                self._evict(oldest)
                return True
        return False

    def _evict(self, conn: Connection) -> None:
        self.evicted += 1
        self._lost(conn)  # its slot is free now; the descriptor follows within a loop turn
        conn.drop()

    def _expire(self, conn: Connection) -> None:
        conn.timer = None
        if not conn.used and not conn.closed:
            self._evict(conn)

    # What the request handler tells -----------------------------------------------

    def started(self, transport: Any) -> Connection | None:
        """A request's head arrived on ``transport``: not silent, and busy until ``finished``."""
        conn = self._by_transport.get(transport)
        if conn is None:
            return None
        if not conn.used:
            conn.used = True
            self._new.pop(conn, None)
            if conn.timer is not None:
                conn.timer.cancel()
                conn.timer = None
        elif not conn.busy:
            self._idle.pop(conn, None)
        conn.busy += 1
        return conn

    def finished(self, conn: Connection | None) -> None:
        """The request that :meth:`started` returned ``conn`` for is answered."""
        if conn is None or conn.closed:
            return
        conn.busy -= 1
        if not conn.busy:
            assert self._loop is not None
            conn.idle_since = self._loop.time()
            self._idle[conn] = None
