"""The ``http`` broker: go-micro's embedded point-to-point broker, with delivery that reports.

See ``docs/http-broker.md`` for the whole story. In short: every broker
serves HTTP on a loopback port; each subscription registers a node of
service ``micro.http.broker`` in the registry; a publisher looks the nodes up
and POSTs each message to every broadcast node and to one node per queue
group. Between microbroker peers messages travel in batches on kept-alive
connections; a go-micro peer gets (and may send) one JSON envelope per POST.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import socket
import ssl
import time
import uuid
from collections import deque
from typing import Any

import aiohttp
from aiohttp import web

from ..._broker import (
    DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_MAX_HEADERS,
    Broker,
    Capabilities,
    Handler,
    Subscriber,
)
from ..._errors import MicrobrokerError, NotConnected, PublishError
from ..._message import Message
from ..._plugins import report_error
from ..._retry import backoff
from ...registries import DEFAULT_TTL, Node, Registry, Service, get_registry
from . import _wire
from ._listen import Listener, default_max_connections
from ._reports import Tally, Throttled
from ._server import Budget, HttpSubscriber, make_app

logger = logging.getLogger("microbroker.broker.http")

_DEFAULT_MAX_MESSAGE = 8 * 1024 * 1024
_BATCH_BYTES = 1024 * 1024
_DEFAULT_REQUEST_BYTES = 32 * 1024 * 1024
# A registry renewal that failed is tried again soon (this, doubling), not a whole interval later.
_RENEW_RETRY = 0.1


class HttpBroker(Broker):
    """The embedded default broker: HTTP between processes, no server to run.

    Publishing returns once every target subscription has the message in the
    publisher's bounded retention buffer; the broker then delivers it, retries
    with backoff until the subscriber acks, fails over within a queue group,
    and reports what it finally cannot deliver to the ``on_error`` hooks.
    ``publish(..., confirm=True)`` waits for the verdicts instead.
    """

    name = "http"
    default_address = "127.0.0.1:0"

    def __init__(
        self,
        address: str | None = None,
        *,
        registry: Registry | str | None = None,
        secret: str | None = None,
        tls: ssl.SSLContext | None = None,
        client_tls: ssl.SSLContext | bool | None = None,
        advertise: str | None = None,
        max_message_size: int = _DEFAULT_MAX_MESSAGE,
        max_pending: int = 10_000,
        publish_timeout: float = 10.0,
        max_deliver: int | None = None,
        redelivery_delay: float = 0.01,
        max_redelivery_delay: float = 2.0,
        ack_timeout: float = 30.0,
        read_timeout: float = 10.0,
        idle_timeout: float = 30.0,
        connect_timeout: float = 5.0,
        max_batch: int = 512,
        max_inbox: int = 4096,
        register_ttl: float | None = None,
        lookup_interval: float = 0.25,
        drain_timeout: float = 10.0,
        max_connections: int | None = None,
        open_timeout: float = 5.0,
        max_request_bytes: int = _DEFAULT_REQUEST_BYTES,
        max_headers: int | None = DEFAULT_MAX_HEADERS,
        max_header_bytes: int | None = DEFAULT_MAX_HEADER_BYTES,
    ) -> None:
        """Create an http broker.

        :param address: ``host:port`` to serve on (default ``127.0.0.1:0``, a
            free loopback port). ``MICRO_BROKER_ADDRESS`` sets it through ``get_broker``.
        :param registry: a :class:`~microbroker.registries.Registry`, or the
            name of one; default: ``MICRO_REGISTRY`` or ``local``.
        :param secret: a shared secret every request must carry as
            ``Authorization: Bearer <secret>``; default ``MICRO_BROKER_SECRET``.
        :param tls: serve HTTPS with this server context (nodes are then
            registered with ``secure=true``).
        :param client_tls: how to verify HTTPS subscribers: a client context,
            ``True`` for the system's default verification, ``False`` to not
            verify (a self-signed test certificate). Default: verify.
        :param advertise: ``host:port`` to register instead of the bound
            address (when serving on ``0.0.0.0``, say).
        :param max_message_size: largest message (body and headers, in bytes)
            a publish accepts and the server reads (a larger request is answered 413).
        :param max_pending: messages (counted once per target subscription)
            the publisher keeps until they are acked. A publish that finds it
            full waits up to ``publish_timeout`` seconds, then raises
            :class:`~microbroker.PublishError`.
        :param max_deliver: deliveries after which the publisher gives a
            message up that its subscriber never settled (unreachable, busy, or
            answering without a verdict), reporting it; ``None`` (the default)
            keeps trying within ``max_pending``. A handler's failures follow
            the subscription's retry policy, on the subscriber's side.
        :param redelivery_delay: first retry delay in seconds when a subscriber
            could not be reached or was busy; it doubles per attempt up to
            ``max_redelivery_delay``.
        :param ack_timeout: seconds a subscription waits for a handler with
            ``auto_ack=False`` to settle a delivery before it counts as a nack.
        :param read_timeout: seconds the server waits for a request body (slow clients).
        :param idle_timeout: seconds an idle connection is kept open after a request.
        :param connect_timeout: seconds to connect to a subscriber before
            trying another node or retrying.
        :param max_batch: messages per request between microbroker peers.
        :param max_inbox: messages a subscription queues before answering 503 (busy).
        :param register_ttl: seconds a registration lives without renewal
            (default: the registry's TTL); it is renewed every third of it.
        :param lookup_interval: seconds a registry lookup is reused for
            routing; a failed delivery forces a fresh one.
        :param drain_timeout: seconds :meth:`disconnect` waits for messages
            still unacknowledged; what remains is reported, never dropped silently.
        :param max_connections: connections the server keeps open at once.
            At the bound a new connection replaces the oldest one that has not
            sent a request yet (or else the one idle the longest); when all are
            in a request it is closed. Default: half the process's open-file
            limit (``ulimit -n``), at most 1,024, so that the other half stays
            for registry renewals, outgoing deliveries and the application.
        :param open_timeout: seconds a new connection has to send its first
            request's head (TLS handshake included) before it is closed.
        :param max_request_bytes: bytes of request bodies the server holds at
            once over all connections, from reading a body until its messages
            are answered; a request beyond it is answered 503 (busy) and the
            publisher retries. One request is always let in, however large.
        :param max_headers: the most headers a message may have; publish
            refuses more (:class:`~microbroker.InvalidHeader`), the server
            answers 400. ``Capabilities.max_headers``.
        :param max_header_bytes: the most bytes (names and UTF-8 values) a
            message's headers may take; publish refuses more
            (:class:`~microbroker.MessageTooLarge`), the server answers 400.
            ``Capabilities.max_header_bytes``.
        """
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if max_connections is not None and max_connections < 1:
            raise ValueError("max_connections must be at least 1 (or None for the default)")
        if max_request_bytes < 1:
            raise ValueError("max_request_bytes must be at least 1")
        if secret is None:
            secret = os.environ.get("MICRO_BROKER_SECRET") or None
        super().__init__(
            address,
            registry=registry,
            secret=secret,
            tls=tls,
            client_tls=client_tls,
            advertise=advertise,
            max_message_size=max_message_size,
            max_pending=max_pending,
            publish_timeout=publish_timeout,
            max_deliver=max_deliver,
            redelivery_delay=redelivery_delay,
            max_redelivery_delay=max_redelivery_delay,
            ack_timeout=ack_timeout,
            read_timeout=read_timeout,
            idle_timeout=idle_timeout,
            connect_timeout=connect_timeout,
            max_batch=max_batch,
            max_inbox=max_inbox,
            register_ttl=register_ttl,
            lookup_interval=lookup_interval,
            drain_timeout=drain_timeout,
            max_connections=max_connections,
            open_timeout=open_timeout,
            max_request_bytes=max_request_bytes,
            max_headers=max_headers,
            max_header_bytes=max_header_bytes,
        )
        self._registry_option = registry
        self.secret = secret
        self.tls = tls
        self.client_tls = client_tls
        self.advertise = advertise
        self.max_message_size = max_message_size
        # Room for the base64 of a full-size body plus its headers in go-micro's envelope.
        self.max_request_size = max_message_size * 4 // 3 + 1024 * 1024
        # Smaller requests overlap better: the subscriber handles one while the next is sent.
        self.max_batch_bytes = min(self.max_request_size, _BATCH_BYTES)
        self.max_pending = max_pending
        self.publish_timeout = publish_timeout
        self.max_deliver = max_deliver
        self.redelivery_delay = redelivery_delay
        self.max_redelivery_delay = max_redelivery_delay
        self.ack_timeout = ack_timeout
        self.read_timeout = read_timeout
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout
        self.max_batch = max_batch
        self.max_inbox = max_inbox
        self.register_ttl = register_ttl
        self.lookup_interval = lookup_interval
        self.drain_timeout = drain_timeout
        self.max_connections = max_connections
        self.open_timeout = open_timeout
        self.max_request_bytes = max_request_bytes
        self._budget = Budget(max_request_bytes)
        self._listener: Listener | None = None
        self.capabilities = Capabilities(
            queue_groups=True,
            ack=True,
            at_least_once=True,
            persistence=False,
            ordering=True,
            reconnect=False,
            wildcards=None,
            max_message_size=max_message_size,
            max_headers=max_headers,
            max_header_bytes=max_header_bytes,
        )
        self.id = str(uuid.uuid4())
        self.registry: Registry | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._bound: str | None = None
        self._subscribers: dict[str, HttpSubscriber] = {}
        self._senders: dict[str, _Sender] = {}
        self._routes: dict[str, _Routes] = {}
        self._rr: dict[tuple[str, str], int] = {}
        self._pending = 0
        self._room: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._heartbeat: asyncio.Task[None] | None = None
        self._tally: Tally | None = None
        self._warn = Throttled(logger)

    # Lifecycle --------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._runner is not None

    @property
    def bound_address(self) -> str | None:
        """The ``host:port`` the server listens on once connected (the real port for port 0)."""
        return self._bound

    async def connect(self) -> None:
        if self._runner is not None:
            return
        option = self._registry_option
        registry = get_registry(option) if option is None or isinstance(option, str) else option
        host, port = _split(self._address)
        runner = web.AppRunner(
            make_app(self),
            access_log=None,
            handle_signals=False,
            keepalive_timeout=self.idle_timeout,
        )
        await runner.setup()
        server = runner.server
        assert server is not None
        listener = Listener(
            server,
            tls=self.tls,
            max_connections=self.max_connections or default_max_connections(),
            open_timeout=self.open_timeout,
        )
        try:
            _host, bound_port = listener.start(host, port)
        except OSError as exc:
            await runner.cleanup()
            raise MicrobrokerError(
                f"http broker cannot listen on {self._address}: {exc}. "
                "Pick another address (MICRO_BROKER_ADDRESS=127.0.0.1:0 takes a free port)."
            ) from exc
        self._listener = listener
        self._bound = _join(host, bound_port)
        verify: Any = self.client_tls
        if verify is None or verify is True:
            verify = True
        headers = {"Authorization": f"Bearer {self.secret}"} if self.secret else None
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ssl=verify),
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=self.connect_timeout, sock_read=self.ack_timeout + 30
            ),
            headers=headers,
            skip_auto_headers=("User-Agent",),
        )
        self.registry = registry
        self._room = asyncio.Event()
        self._room.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._tally = Tally(_report)
        self._runner = runner
        ttl: float = self.register_ttl or getattr(registry, "ttl", None) or DEFAULT_TTL
        interval = ttl / 3
        self._heartbeat = asyncio.get_running_loop().create_task(
            self._beat(interval), name="microbroker-http-heartbeat"
        )

    async def disconnect(self) -> None:
        runner = self._runner
        if runner is None:
            return
        await asyncio.gather(*(sub.unsubscribe() for sub in list(self._subscribers.values())))
        idle = self._idle
        if idle is not None and self._pending:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(idle.wait(), self.drain_timeout)
        self._runner = None
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        senders = list(self._senders.values())
        self._senders.clear()
        for sender in senders:
            sender.close()
        tasks = [s.task for s in senders if s.task is not None] + list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        lost = [out for sender in senders for out in sender.queue]
        for out in lost:
            self._finish(
                out, PublishError("the broker disconnected before it was acked"), reason="closed"
            )
        if self._pending:
            _report(
                PublishError(
                    f"http broker disconnected with {self._pending} message deliveries "
                    f"still unacknowledged after drain_timeout={self.drain_timeout}s"
                )
            )
        self._pending = 0
        if self._tally is not None:
            self._tally.flush()
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        await runner.cleanup()
        self._routes.clear()
        self._bound = None
        registry = self.registry
        if registry is not None and not isinstance(self._registry_option, Registry):
            # connect() made this registry: release what it holds (mdns: sockets, tasks).
            try:
                await registry.close()
            except Exception as exc:
                logger.warning("http broker could not close the %s registry: %s", registry, exc)

    async def _beat(self, interval: float) -> None:
        delay = interval
        retry = min(_RENEW_RETRY, interval)
        while True:
            await asyncio.sleep(delay)
            registry = self.registry
            failed = False
            for sub in list(self._subscribers.values()):
                if registry is None:
                    return
                try:
                    await registry.register(sub.service, ttl=self.register_ttl)
                except Exception as exc:
                    failed = True
                    self._warn.warning(
                        "renew", "http broker could not renew %s (retrying): %s", sub.id, exc
                    )
            # A failed renewal is tried again soon, so that one failure does not cost the
            # registration: the TTL is three intervals.
            delay = min(retry, interval) if failed else interval
            retry = min(retry * 2, interval) if failed else min(_RENEW_RETRY, interval)

    # Subscribing ------------------------------------------------------------------

    async def receive(
        self,
        topic: str,
        deliver: Handler,
        *,
        queue: str | None,
        auto_ack: bool,
        **options: Any,
    ) -> Subscriber:
        if options:
            raise TypeError(f"http broker subscribe() takes no option(s) {', '.join(options)}")
        assert self.registry is not None
        assert self._bound is not None
        address = self.advertise or self._advertised(self._bound)
        node = Node(
            id=f"{topic}-{uuid.uuid4()}",
            address=address,
            metadata={
                "secure": "true" if self.tls is not None else "false",
                "broker": "http",
                "topic": topic,
                "microbroker": _wire.PROTOCOL,
            },
        )
        service = Service(_wire.SERVICE, queue or _wire.BROADCAST, {}, [node])
        sub = HttpSubscriber(self, topic, deliver, queue, auto_ack, service)
        self._subscribers[sub.id] = sub
        try:
            await self.registry.register(service, ttl=self.register_ttl)
        except BaseException:
            self._subscribers.pop(sub.id, None)
            await sub.unsubscribe()
            raise
        return sub

    async def _remove(self, sub: HttpSubscriber) -> None:
        self._subscribers.pop(sub.id, None)
        if self.registry is not None:
            try:
                await self.registry.deregister(sub.service)
            except Exception as exc:
                logger.warning("http broker could not deregister %s: %s", sub.id, exc)

    @staticmethod
    def _advertised(bound: str) -> str:
        host, port = _split(bound)
        if host in ("0.0.0.0", "::", ""):
            host = socket.gethostbyname(socket.gethostname())
        return _join(host, port)

    # Publishing -------------------------------------------------------------------

    async def send(self, topic: str, message: Message, **options: Any) -> None:
        """Publish ``message`` to every subscription of ``topic``.

        Returns once each target subscription (every broadcast subscriber, one
        member per queue group) has the message in the retention buffer.
        Raises :class:`~microbroker.PublishError` when no subscription is
        registered for the topic, or the buffer stays full for
        ``publish_timeout`` seconds.

        Option ``confirm=True`` waits until every target has acked instead,
        and raises :class:`~microbroker.PublishError` when none acked or when
        one was given up (``max_deliver`` reached, request rejected).
        """
        confirm = bool(options.pop("confirm", False))
        if options:
            raise TypeError(
                f"http broker publish() takes no option(s) {', '.join(options)}; "
                "it takes confirm=True"
            )
        if self._runner is None:  # disconnected before this publish got its turn
            raise NotConnected("the http broker is not connected")
        body = message.body
        if type(body) is not bytes:
            body = bytes(body)
        routes = self._routes.get(topic)
        if routes is None or routes.expires < time.monotonic():
            routes = await self._lookup(topic)
        targets = len(routes.broadcast) + len(routes.groups)
        if targets == 0:
            raise PublishError(
                f"no subscriber for topic {topic!r} is registered in the "
                f"{self.registry} registry; nothing would receive this message"
            )
        if self._pending + targets > self.max_pending:
            await self._wait_for_room(targets, topic)
        headers = dict(message.headers)
        headers[_wire.TOPIC_HEADER] = topic
        msg = _Msg(topic, headers, _wire.encode_headers(headers), body)
        if confirm:
            msg.outcome = _Outcome(targets)
        self._pending += targets
        if self._idle is not None:
            self._idle.clear()
        for node in routes.broadcast:
            self._sender(node).push(_Out(msg, None))
        for group, nodes in routes.groups.items():
            self._sender(self._pick(topic, group, nodes)).push(_Out(msg, group))
        if msg.outcome is not None:
            await msg.outcome.future

    async def _wait_for_room(self, targets: int, topic: str) -> None:
        if targets > self.max_pending:
            raise PublishError(
                f"topic {topic!r} has {targets} subscriptions, more than max_pending="
                f"{self.max_pending}: raise max_pending"
            )
        room = self._room
        assert room is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.publish_timeout
        while self._pending + targets > self.max_pending:
            room.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise PublishError(
                    f"the http broker's buffer is full: {self._pending} deliveries await "
                    f"acknowledgement (max_pending={self.max_pending}) after waiting "
                    f"{self.publish_timeout}s; subscribers of {topic!r} are too slow or down"
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(room.wait(), remaining)

    async def _lookup(self, topic: str) -> _Routes:
        registry = self.registry
        assert registry is not None
        services = await registry.get_service(_wire.SERVICE)
        routes = _Routes(time.monotonic() + self.lookup_interval)
        for service in services:
            nodes = [
                n
                for n in service.nodes
                if n.metadata.get("topic") == topic and n.metadata.get("broker") == "http"
            ]
            if not nodes:
                continue
            if service.version == _wire.BROADCAST:
                routes.broadcast.extend(nodes)
            else:
                routes.groups.setdefault(service.version, []).extend(nodes)
        if routes.broadcast or routes.groups:
            self._routes[topic] = routes
        else:
            self._routes.pop(topic, None)
        self._prune(topic, routes)
        return routes

    def _prune(self, topic: str, routes: _Routes) -> None:
        """Close the idle senders of ``topic`` whose node left the registry."""
        live = {n.id for n in routes.broadcast}
        for nodes in routes.groups.values():
            live.update(n.id for n in nodes)
        stale = [
            s
            for s in self._senders.values()
            if s.topic == topic and s.node_id not in live and not s.queue and not s.busy
        ]
        for sender in stale:
            del self._senders[sender.node_id]
            sender.close()

    def _pick(self, topic: str, group: str, nodes: list[Node]) -> Node:
        key = (topic, group)
        start = self._rr.get(key, 0)
        now = time.monotonic()
        count = len(nodes)
        for i in range(count):
            node = nodes[(start + i) % count]
            sender = self._senders.get(node.id)
            if sender is None or sender.down_until <= now:
                self._rr[key] = start + i + 1
                return node
        self._rr[key] = start + 1
        return nodes[start % count]

    def _sender(self, node: Node) -> _Sender:
        sender = self._senders.get(node.id)
        if sender is None or sender.address != node.address:
            if sender is not None:
                sender.close()
            sender = self._senders[node.id] = _Sender(self, node)
        return sender

    # Outcomes ----------------------------------------------------------------------

    def _finish(
        self,
        out: _Out,
        error: BaseException | None,
        *,
        acked: bool = False,
        reason: str = "",
    ) -> None:
        """One target's delivery is over: acked, gone, or given up with ``error``.

        What no ``confirm=True`` caller waits for goes to ``on_error``, counted:
        one report per target and ``reason`` per interval (see :class:`Tally`).
        """
        self._pending -= 1
        room = self._room
        if room is not None and not room.is_set() and self._pending < self.max_pending:
            room.set()
        if self._pending <= 0:
            self._pending = 0
            if self._idle is not None:
                self._idle.set()
        outcome = out.msg.outcome
        if outcome is not None:
            outcome.settle(out.msg.topic, acked, error)
        elif error is not None:
            tally = self._tally
            if tally is None:
                _report(error)
            else:
                target = out.node_id or f"of group {out.group!r}"
                tally.add(out.msg.topic, target, out.address, reason or type(error).__name__, error)

    def _gone(self, out: _Out) -> None:
        """A broadcast subscription left the registry before it acked ``out``: nobody to send to."""
        if out.msg.outcome is not None:
            self._finish(out, None)  # the confirm=True caller hears "all went away"
            return
        self._finish(
            out,
            PublishError(
                "the broadcast subscription left the registry (its process ended or it "
                "unsubscribed) before acknowledging them"
            ),
            reason="gone",
        )

    def _retry(
        self,
        out: _Out,
        delay: float | None,
        failed_node: str | None,
        *,
        delivered: bool = True,
        why: str | None = None,
    ) -> None:
        """Deliver ``out`` again after ``delay`` (``None``: the backoff of its attempt).

        ``delivered`` is false when the subscription never saw the message (it
        had ended, or it was busy): that does not count as a delivery, but
        repeated refusals still back off. ``why`` says what went wrong, for
        the report when the message is given up.
        """
        if why is not None:
            out.why = why
        if delivered:
            out.attempt += 1
        else:
            out.waits += 1
        limit = self.max_deliver
        if limit is not None and out.attempt > limit:
            last = f"; the last attempt: {out.why}" if out.why else ""
            self._finish(
                out,
                PublishError(
                    f"message on {out.msg.topic!r} given up after {limit} deliveries "
                    f"(max_deliver={limit}){last}"
                ),
                reason="max_deliver",
            )
            return
        if delay is None:
            delay = backoff(
                out.attempt - 1 + out.waits, self.redelivery_delay, 2.0, self.max_redelivery_delay
            )
        if failed_node is not None:
            self._routes.pop(out.msg.topic, None)
        task = asyncio.get_running_loop().create_task(self._reroute(out, delay, failed_node))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reroute(self, out: _Out, delay: float, failed_node: str | None) -> None:
        if delay > 0:
            await asyncio.sleep(delay)
        if self._runner is None:
            self._finish(
                out, PublishError("the broker disconnected before it was acked"), reason="closed"
            )
            return
        topic = out.msg.topic
        try:
            routes = self._routes.get(topic)
            if routes is None or routes.expires < time.monotonic():
                routes = await self._lookup(topic)
        except Exception as exc:
            logger.warning("http broker registry lookup failed: %s", exc)
            self._retry(out, None, None)
            return
        if out.group is None:
            node = next((n for n in routes.broadcast if n.id == out.node_id), None)
            if node is None:
                # The subscription is gone (unsubscribed, or its process died): nobody to
                # deliver to, but the publisher hears how many it lost.
                self._gone(out)
                return
        else:
            nodes = routes.groups.get(out.group)
            if not nodes:
                # No member right now: keep the message for the next one, within the buffer.
                self._retry_same(out)
                return
            if failed_node is not None and len(nodes) > 1:
                nodes = [n for n in nodes if n.id != failed_node] or nodes
            node = self._pick(topic, out.group, nodes)
        self._sender(node).push(out)

    def _retry_same(self, out: _Out) -> None:
        delay = backoff(out.attempt, self.redelivery_delay, 2.0, self.max_redelivery_delay)
        task = asyncio.get_running_loop().create_task(
            self._reroute(out, max(delay, self.lookup_interval), None)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class _Routes:
    __slots__ = ("broadcast", "expires", "groups")

    def __init__(self, expires: float) -> None:
        self.expires = expires
        self.broadcast: list[Node] = []
        self.groups: dict[str, list[Node]] = {}


class _Outcome:
    """What ``publish(confirm=True)`` waits for: the verdicts of all targets."""

    __slots__ = ("acked", "errors", "future", "remaining")

    def __init__(self, targets: int) -> None:
        self.remaining = targets
        self.acked = 0
        self.errors: list[BaseException] = []
        self.future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def settle(self, topic: str, acked: bool, error: BaseException | None) -> None:
        self.remaining -= 1
        if acked:
            self.acked += 1
        if error is not None:
            self.errors.append(error)
        if self.remaining or self.future.done():
            return
        if self.errors:
            self.future.set_exception(
                PublishError(
                    f"{len(self.errors)} subscription(s) of {topic!r} did not accept the "
                    f"message: {self.errors[0]}"
                )
            )
        elif not self.acked:
            self.future.set_exception(
                PublishError(f"no subscriber of {topic!r} accepted the message (all went away)")
            )
        else:
            self.future.set_result(None)


class _Msg:
    __slots__ = ("body", "head", "headers", "outcome", "topic")

    def __init__(self, topic: str, headers: dict[str, str], head: bytes, body: bytes) -> None:
        self.topic = topic
        self.headers = headers
        self.head = head
        self.body = body
        self.outcome: _Outcome | None = None


class _Out:
    """One message on its way to one target: a broadcast node, or a queue group."""

    __slots__ = ("address", "attempt", "group", "msg", "node_id", "waits", "why")

    def __init__(self, msg: _Msg, group: str | None) -> None:
        self.msg = msg
        self.group = group
        self.attempt = 1
        self.node_id = ""
        self.address = ""
        self.waits = 0
        self.why: str | None = None


class _Sender:
    """Sends the messages for one subscriber node, one request at a time, in batches.

    One request in flight per node keeps the order; while it is in flight the
    next batch builds up, so batches grow exactly as fast as the subscriber is slow.
    """

    def __init__(self, broker: HttpBroker, node: Node) -> None:
        self.broker = broker
        self.node_id = node.id
        self.topic = node.metadata.get("topic", "")
        self.address = node.address
        self.busy = False
        self.secure = node.metadata.get("secure") == "true"
        scheme = "https" if self.secure else "http"
        self.url = f"{scheme}://{node.address}/"
        self.params = {"id": node.id}
        self.batch = node.metadata.get("microbroker") == _wire.PROTOCOL
        self.queue: deque[_Out] = deque()
        self.down_until = 0.0
        self.resets = 0
        self._suspected = -_SUSPECT_INTERVAL
        self.done = 0
        self._wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = asyncio.get_running_loop().create_task(
            self._run(), name=f"microbroker-http-send-{node.id}"
        )
        self._closed = False

    def push(self, out: _Out) -> None:
        out.node_id = self.node_id
        out.address = self.address
        self.queue.append(out)
        if not self._wake.is_set():
            self._wake.set()

    def close(self) -> None:
        self._closed = True
        task = self.task
        if task is not None and not task.done() and self.queue:
            # Another sender replaces this one: hand the queued messages back for routing.
            for out in self.queue:
                self.broker._retry(out, 0.0, self.node_id)
            self.queue.clear()
        if task is not None:
            task.cancel()

    async def _run(self) -> None:
        queue = self.queue
        broker = self.broker
        while not self._closed:
            if not queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch: list[_Out] = []
            size = 0
            limit = broker.max_batch_bytes
            while queue and len(batch) < broker.max_batch:
                out = queue[0]
                n = len(out.msg.head) + len(out.msg.body) + 12
                if batch and size + n > limit:
                    break
                batch.append(queue.popleft())
                size += n
            self.done = 0
            self.busy = True
            try:
                if self.batch:
                    await self._send_batch(batch)
                else:
                    for out in batch:
                        await self._send_one(out)
                        self.done += 1
            except _Unreachable as exc:
                for out in batch[self.done :]:
                    broker._retry(out, None, self.node_id, why=str(exc))
            except asyncio.CancelledError:
                self._cancelled(batch[self.done :])
                raise
            except Exception as exc:
                # A bug must not strand the batch: say so, and send what is unsettled again.
                broker._warn.warning(
                    f"bug {self.node_id}",
                    "http broker: sending to %s failed unexpectedly",
                    self.url,
                    exc_info=exc,
                )
                for out in batch[self.done :]:
                    broker._retry(out, None, self.node_id, why=f"an internal error: {exc!r}")
            finally:
                self.busy = False

    def _cancelled(self, unsettled: list[_Out]) -> None:
        for out in unsettled:
            if self._closed:
                self.broker._finish(
                    out, PublishError("the broker disconnected before an ack"), reason="closed"
                )
            else:
                self.broker._retry(out, 0.0, self.node_id)

    def _failure(self, exc: BaseException) -> str:
        """What a failed request says, for the give-up report; a TLS refusal is suspected.

        A subscriber that refuses a publisher's TLS (one requiring a client
        certificate the publisher does not send, say) may only reset the
        connection: asyncio's TLS server sends no alert. A reset can also be
        a subscriber at its connection bound, so the messages are not given
        up for it, but ``on_error`` hears the suspicion (once an interval).
        """
        why = f"could not reach {self.url}: {_describe(exc)}"
        if not self.secure or not _is_reset(exc):
            return why
        self.resets += 1
        if self.resets < _SUSPECT_AFTER:
            return why
        why = (
            f"{self.url} reset {self.resets} TLS connections in a row before answering: it "
            "may refuse this publisher's TLS (does it require a client certificate? give "
            "client_tls a context with load_cert_chain(); its log names the reason)"
        )
        now = time.monotonic()
        if now - self._suspected >= _SUSPECT_INTERVAL:
            self._suspected = now
            _report(PublishError(f"subscription {self.node_id} at {self.address}: {why}"))
        return why

    def _mark_down(self) -> None:
        self.down_until = time.monotonic() + self.broker.max_redelivery_delay

    async def _send_batch(self, batch: list[_Out]) -> None:
        broker = self.broker
        session = broker._session
        assert session is not None
        parts: list[bytes] = []
        for o in batch:
            parts.extend(_wire.frame_parts(o.attempt, o.msg.head, o.msg.body))
        body = b"".join(parts)  # one copy of each body, not two
        try:
            async with session.post(
                self.url,
                params=self.params,
                data=body,
                headers={"Content-Type": _wire.BATCH_TYPE},
            ) as response:
                self.resets = 0
                if response.status != 200:
                    text = (await response.text())[:200]
                    self._rejected(batch, response.status, text)
                    self.done = len(batch)
                    return
                async for line in response.content:
                    results = json.loads(line)
                    for result in results:
                        if self.done >= len(batch):
                            break
                        self._settle(batch[self.done], result)
                        self.done += 1
        except (aiohttp.ClientError, TimeoutError, ValueError, OSError) as exc:
            problem = _tls_problem(exc)
            if problem is not None:
                self._refuse_tls(batch[self.done :], problem)
                self.done = len(batch)
                return
            self._mark_down()
            logger.debug("http broker: delivery to %s failed: %r", self.url, exc)
            why = self._failure(exc)
        else:
            why = "the subscriber's answer ended before every verdict"
        # Whatever got no verdict (connection lost, short answer) is sent again.
        for out in batch[self.done :]:
            broker._retry(out, None, self.node_id, why=why)
        self.done = len(batch)

    async def _send_one(self, out: _Out) -> None:
        """go-micro's wire format: one JSON envelope per POST."""
        session = self.broker._session
        assert session is not None
        data = _wire.encode_envelope(out.msg.headers, out.msg.body)
        try:
            async with session.post(
                self.url,
                params=self.params,
                data=data,
                headers={"Content-Type": _wire.JSON_TYPE},
            ) as response:
                await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            problem = _tls_problem(exc)
            if problem is not None:
                self._refuse_tls([out], problem)
                return
            self._mark_down()
            logger.debug("http broker: delivery to %s failed: %r", self.url, exc)
            raise _Unreachable(self._failure(exc)) from exc
        self.resets = 0
        if 200 <= status < 300:
            self.broker._finish(out, None, acked=True)
        elif status == 404:
            self._settle(out, _wire.GONE)
        elif status in (401, 403, 413) or (400 <= status < 500 and status != 408):
            self._rejected([out], status, "")
        elif status == 503:
            self._mark_down()
            self.broker._retry(out, None, self.node_id, delivered=False, why="busy (HTTP 503)")
        else:
            self.broker._retry(out, None, None, why=f"HTTP {status}")

    def _settle(self, out: _Out, result: Any) -> None:
        broker = self.broker
        if result is None:
            broker._finish(out, None, acked=True)
        elif result == _wire.GONE:
            self.broker._routes.pop(out.msg.topic, None)
            broker._retry(out, 0.0, self.node_id, delivered=False, why="the subscription ended")
        elif result == _wire.BUSY:
            broker._retry(
                out, None, self.node_id, delivered=False, why="the subscription's inbox was full"
            )
        elif isinstance(result, int | float):
            broker._retry(
                out, None if result < 0 else float(result), None, why="the handler nacked"
            )
        else:
            broker._retry(out, None, None, why=f"an unknown verdict {result!r}")

    def _rejected(self, batch: list[_Out], status: int, text: str) -> None:
        broker = self.broker
        if status == 404:
            for out in batch:
                self._settle(out, _wire.GONE)
            return
        if status == 503:
            # Busy (its request budget is spent): nothing was delivered; try later or elsewhere.
            self._mark_down()
            for out in batch:
                broker._retry(out, None, self.node_id, delivered=False, why="busy (HTTP 503)")
            return
        if status >= 500 or status == 408:
            for out in batch:
                broker._retry(out, None, self.node_id, why=f"HTTP {status}")
            return
        hint = {
            401: "wrong or missing secret: set the same secret (MICRO_BROKER_SECRET) on "
            "publisher and subscriber",
            413: "the subscriber accepts smaller messages (max_message_size)",
        }.get(status, text.strip())
        if status == 401:
            self.broker._warn.warning(
                f"401 {self.node_id}", "http broker: %s answers 401: %s", self.url, hint
            )
        for out in batch:
            broker._finish(
                out,
                PublishError(
                    f"subscriber {self.node_id} at {self.address} rejected a message on "
                    f"{out.msg.topic!r} with HTTP {status}: {hint}"
                ),
                reason=f"http-{status}",
            )

    def _refuse_tls(self, batch: list[_Out], problem: str) -> None:
        """A TLS failure that no retry can mend: give the messages up, saying what to set."""
        broker = self.broker
        self._mark_down()
        broker._warn.warning(
            f"tls {self.node_id}", "http broker cannot deliver to %s: %s", self.url, problem
        )
        for out in batch:
            broker._finish(
                out,
                PublishError(
                    f"subscriber {self.node_id} at {self.address} cannot be sent a message on "
                    f"{out.msg.topic!r} over TLS: {problem}"
                ),
                reason="tls",
            )


class _Unreachable(Exception):
    pass


# Resets in a row on a TLS connection before a TLS refusal is suspected, and how often it is told.
_SUSPECT_AFTER = 3
_SUSPECT_INTERVAL = 30.0


def _is_reset(exc: BaseException) -> bool:
    """Whether ``exc`` is a connection closed by the other side before it answered."""
    error: BaseException | None = exc
    for _ in range(8):
        if error is None:
            return False
        if isinstance(error, ConnectionResetError | aiohttp.ServerDisconnectedError):
            return True
        if isinstance(error, OSError) and error.errno == errno.ECONNRESET:
            return True
        error = error.__cause__ or error.__context__
    return False


# SSL errors that say the connection broke, not that TLS was refused: worth another try.
_TRANSIENT_SSL = (
    ssl.SSLEOFError,
    ssl.SSLZeroReturnError,
    ssl.SSLSyscallError,
    ssl.SSLWantReadError,
    ssl.SSLWantWriteError,
)


def _tls_problem(exc: BaseException) -> str | None:
    """What to tell about a TLS failure that trying again cannot fix; ``None`` for others.

    An untrusted certificate or a handshake the other side refused stays so
    until someone changes a certificate or an option: retrying would only hide it.
    """
    todo: list[BaseException] = [exc]
    seen: set[int] = set()
    while todo:
        error = todo.pop()
        if id(error) in seen:
            continue
        seen.add(id(error))
        # aiohttp's wrappers (ClientConnectorCertificateError, ClientConnectorSSLError) are
        # ssl errors too, without the details: look at what they wrap first.
        inner = [
            e
            for e in (
                getattr(error, "certificate_error", None),
                getattr(error, "os_error", None),
                error.__cause__,
                error.__context__,
            )
            if isinstance(e, BaseException) and id(e) not in seen
        ]
        todo.extend(inner)
        if inner and isinstance(error, aiohttp.ClientError):
            continue
        if isinstance(error, ssl.SSLCertVerificationError):
            detail = (
                getattr(error, "verify_message", None) or getattr(error, "reason", None) or error
            )
            return (
                f"its certificate is not trusted ({detail}): give the publisher "
                "client_tls=ssl.create_default_context(cafile=<the CA that signed the "
                "subscriber's certificate>), and the subscriber a certificate for the address "
                "it registers"
            )
        if isinstance(error, ssl.SSLError) and not isinstance(error, _TRANSIENT_SSL):
            reason = str(getattr(error, "reason", None) or error)
            if "EOF" in reason.upper():
                continue
            if reason == "WRONG_VERSION_NUMBER":
                return (
                    "it does not answer in TLS (wrong version number), though registered "
                    "with secure=true"
                )
            return (
                f"the TLS handshake failed ({reason}): check the certificates, tls= on "
                "the subscriber and client_tls= on the publisher"
            )
    return None


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _report(error: BaseException) -> None:
    report_error(error, None)


def _split(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep:
        return address or "127.0.0.1", 0
    host = host.strip("[]")
    try:
        return host or "127.0.0.1", int(port or 0)
    except ValueError:
        raise ValueError(f"http broker address must be host:port, not {address!r}") from None


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
