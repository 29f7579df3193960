"""The ``memory`` broker: in-process, and the reference for the semantics every broker is held to.

Every memory broker created with the same address in one event loop shares
one bus, so that a publisher and a subscriber built separately (two Services
in one test, say) reach each other. A bus lives as long as its event loop: a
subscription left behind by one ``asyncio.run`` is not met by the next.

Semantics:

- broadcast: every subscription without a queue gets every message;
- queue groups: each message goes to exactly one member of each group,
  round-robin over the members; a member that leaves hands its pending
  messages to the others, and a group left empty keeps them for the next member;
- each subscription has one worker: order per topic is kept for a subscriber;
- ``nack()`` and handler exceptions redeliver the message (to the same
  subscription, or to a member of the same group) after an exponential backoff;
- a subscription holds at most ``max_pending`` undelivered messages; a
  publish to a full one waits for room, up to ``publish_timeout`` seconds,
  then raises :class:`~microbroker.PublishError`: memory never grows without
  bound and nothing is dropped silently;
- topics may use NATS-style wildcards in subscriptions: ``.`` separates
  levels, ``*`` matches one level, ``>`` the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Any

from .._broker import Broker, Capabilities, Handler, Subscriber, Wildcards, dispatcher
from .._errors import InvalidTopic, PublishError
from .._message import Delivery, Message

_WILDCARDS = Wildcards(separator=".", one="*", many=">")
_YIELD_EVERY = 256


class MemoryBroker(Broker):
    """An in-process broker with full acknowledgement semantics. See the module docstring."""

    name = "memory"
    default_address = "default"
    capabilities = Capabilities(
        queue_groups=True,
        ack=True,
        at_least_once=True,
        persistence=False,
        ordering=True,
        reconnect=False,
        wildcards=_WILDCARDS,
        max_message_size=None,
    )

    def __init__(
        self,
        address: str | None = None,
        *,
        max_pending: int = 10_000,
        publish_timeout: float = 30.0,
        redelivery_delay: float = 0.005,
        max_redelivery_delay: float = 1.0,
        max_deliver: int | None = None,
    ) -> None:
        """Create a memory broker.

        :param address: the name of the in-process bus; brokers with the same
            address share topics (default ``"default"``).
        :param max_pending: undelivered messages a subscription may hold before
            a publish to it waits.
        :param publish_timeout: seconds a publish waits for room before it
            raises :class:`~microbroker.PublishError`.
        :param redelivery_delay: seconds before the first redelivery of a
            nacked message; it doubles with each attempt.
        :param max_redelivery_delay: the cap on that backoff.
        :param max_deliver: the number of deliveries after which a message that
            is still nacked is given up (reported to the ``on_error`` hooks);
            ``None`` redelivers without limit.
        """
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        super().__init__(
            address,
            max_pending=max_pending,
            publish_timeout=publish_timeout,
            redelivery_delay=redelivery_delay,
            max_redelivery_delay=max_redelivery_delay,
            max_deliver=max_deliver,
        )
        self.max_pending = max_pending
        self.publish_timeout = publish_timeout
        self.redelivery_delay = redelivery_delay
        self.max_redelivery_delay = max_redelivery_delay
        self.max_deliver = max_deliver
        self._bus: _Bus | None = None
        self._subs: set[_MemorySubscriber] = set()

    @property
    def connected(self) -> bool:
        return self._bus is not None

    async def connect(self) -> None:
        if self._bus is None:
            self._bus = _Bus.get(self._address)

    async def disconnect(self) -> None:
        if self._bus is None:
            return
        subs = list(self._subs)
        await asyncio.gather(*(sub.unsubscribe() for sub in subs))
        self._bus = None

    async def publish(self, topic: str, message: Message, **options: Any) -> None:
        self._check_publish(topic, message)
        bus = self._bus
        assert bus is not None
        if "*" in topic or ">" in topic:
            _check_literal(topic)
        body = message.body
        if type(body) is not bytes:
            body = bytes(body)
        exact = bus.exact.get(topic)
        if exact is not None:
            await exact.deliver(self, topic, body, message.headers)
        if bus.patterns:
            for pattern, node in list(bus.patterns.items()):
                if _matches(pattern, topic):
                    await node.deliver(self, topic, body, message.headers)

    async def subscribe(
        self,
        topic: str,
        handler: Handler,
        *,
        queue: str | None = None,
        auto_ack: bool = True,
        **options: Any,
    ) -> Subscriber:
        self._check_subscribe(topic)
        if options:
            raise TypeError(f"memory broker subscribe() takes no option(s) {', '.join(options)}")
        bus = self._bus
        assert bus is not None
        wildcard = _check_pattern(topic)
        table = bus.patterns if wildcard else bus.exact
        node = table.get(topic)
        if node is None:
            node = table[topic] = _TopicNode()
        sub = _MemorySubscriber(self, node, topic, handler, queue, auto_ack)
        node.add(sub)
        self._subs.add(sub)
        return sub

    def _backoff(self, attempt: int) -> float:
        delay: float = self.redelivery_delay * 2.0 ** (attempt - 1)
        return min(delay, self.max_redelivery_delay)


class _Bus:
    """The topics of one in-process address."""

    _buses: dict[asyncio.AbstractEventLoop, dict[str, _Bus]] = {}

    def __init__(self) -> None:
        self.exact: dict[str, _TopicNode] = {}
        self.patterns: dict[str, _TopicNode] = {}

    @classmethod
    def get(cls, address: str) -> _Bus:
        """The bus of ``address`` in the running event loop."""
        loop = asyncio.get_running_loop()
        buses = cls._buses.get(loop)
        if buses is None:
            # Subscribers' tasks belong to one loop: a bus cannot be shared with another.
            # The buses of loops closed since (an earlier asyncio.run) go with them.
            for closed in [old for old in cls._buses if old.is_closed()]:
                del cls._buses[closed]
            buses = cls._buses[loop] = {}
        bus = buses.get(address)
        if bus is None:
            bus = buses[address] = cls()
        return bus


class _Group:
    __slots__ = ("backlog", "members", "next")

    def __init__(self) -> None:
        self.members: list[_MemorySubscriber] = []
        self.next = 0
        # Messages of a group that has no member at the moment, for the next one to join.
        self.backlog: deque[tuple[str, bytes, dict[str, str], int]] = deque()

    def pick(self) -> _MemorySubscriber | None:
        members = self.members
        if not members:
            return None
        index = self.next % len(members)
        self.next = index + 1
        return members[index]


class _TopicNode:
    """The subscriptions of one topic (or one wildcard pattern)."""

    __slots__ = ("broadcast", "groups")

    def __init__(self) -> None:
        # Replaced, never mutated: a publish iterating it while it waits for room must not
        # skip a subscription because another one left meanwhile.
        self.broadcast: tuple[_MemorySubscriber, ...] = ()
        # Replaced, never mutated, for the same reason (a dict would raise instead).
        self.groups: dict[str, _Group] = {}

    def add(self, sub: _MemorySubscriber) -> None:
        if sub.queue is None:
            self.broadcast = (*self.broadcast, sub)
            return
        group = self.groups.get(sub.queue)
        if group is None:
            group = _Group()
            self.groups = {**self.groups, sub.queue: group}
        group.members.append(sub)
        while group.backlog:
            sub.push(*group.backlog.popleft())

    async def deliver(
        self,
        broker: MemoryBroker,
        topic: str,
        body: bytes,
        headers: dict[str, str],
    ) -> None:
        for sub in self.broadcast:
            await sub.offer(broker, topic, body, headers)
        for group in self.groups.values():
            member = group.pick()
            if member is None:
                group.backlog.append((topic, body, dict(headers), 1))
            else:
                await member.offer(broker, topic, body, headers)


class _MemoryDelivery(Delivery):
    __slots__ = ("_sub",)

    acks_locally = True  # an ack only ends the delivery; a nack redelivers

    def __init__(self, sub: _MemorySubscriber, topic: str, message: Message, attempt: int) -> None:
        Delivery.__init__(self, topic, message, queue=sub.queue, attempt=attempt)
        self._sub = sub

    async def _settle_nack(self, delay: float | None) -> None:
        self._sub.redeliver(self, delay)


class _MemorySubscriber(Subscriber):
    def __init__(
        self,
        broker: MemoryBroker,
        node: _TopicNode,
        topic: str,
        handler: Handler,
        queue: str | None,
        auto_ack: bool,
    ) -> None:
        super().__init__(topic, queue, auto_ack)
        self._broker = broker
        self._node = node
        self._handler = handler
        self._active = True
        # (topic, body, headers, attempt): the topic differs from the subscription's for a pattern.
        self._inbox: deque[tuple[str, bytes, dict[str, str], int]] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._space: list[asyncio.Future[None]] = []
        self._handling = False
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"microbroker-memory-{topic}"
        )

    @property
    def active(self) -> bool:
        return self._active

    async def offer(
        self, broker: MemoryBroker, topic: str, body: bytes, headers: dict[str, str]
    ) -> None:
        """Queue a new message, waiting for room when the inbox is full (backpressure)."""
        if len(self._inbox) >= self._broker.max_pending:
            await self._wait_for_room(broker.publish_timeout)
            if not self._active:
                # It left while the publish waited: a group's message goes to the rest of
                # the group (or its backlog); a broadcast subscription that left needs none.
                group = self._node.groups.get(self.queue) if self.queue is not None else None
                if group is not None:
                    member = group.pick()
                    if member is None:
                        group.backlog.append((topic, body, dict(headers), 1))
                    else:
                        await member.offer(broker, topic, body, headers)
                return
        self.push(topic, body, dict(headers), 1)

    async def _wait_for_room(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self._inbox) >= self._broker.max_pending and self._active:
            if asyncio.current_task() is self._task:
                raise PublishError(
                    f"subscription to {self.topic!r} is full ({self._broker.max_pending} pending) "
                    "and the publish comes from its own handler: it would wait forever"
                )
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise PublishError(
                    f"subscription to {self.topic!r} still had {len(self._inbox)} pending "
                    f"messages after {timeout}s: its handler is too slow or stuck"
                )
            waiter = loop.create_future()
            self._space.append(waiter)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter, remaining)

    def push(self, topic: str, body: bytes, headers: dict[str, str], attempt: int) -> None:
        self._inbox.append((topic, body, headers, attempt))
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def redeliver(self, delivery: Delivery, delay: float | None) -> None:
        broker = self._broker
        attempt = delivery.attempt
        max_deliver = broker.max_deliver
        if max_deliver is not None and attempt >= max_deliver:
            from .._registry import report_error

            report_error(
                PublishError(
                    f"message on {delivery.topic!r} given up after {attempt} deliveries "
                    f"(max_deliver={max_deliver})"
                ),
                delivery,
            )
            return
        if delay is None:
            delay = broker._backoff(attempt)
        item = (delivery.topic, delivery.message.body, delivery.message.headers, attempt + 1)
        loop = asyncio.get_running_loop()
        if delay > 0:
            loop.call_later(delay, self._requeue, item)
        else:
            self._requeue(item)

    def _requeue(self, item: tuple[str, bytes, dict[str, str], int]) -> None:
        if self._active:
            self.push(*item)
            return
        if self.queue is not None:
            group = self._node.groups.get(self.queue)
            if group is not None:
                member = group.pick()
                if member is None:
                    group.backlog.append(item)
                else:
                    member.push(*item)

    async def _run(self) -> None:
        inbox = self._inbox
        settled = dispatcher(self._handler, self.auto_ack)
        queue = self.queue
        space = self._space
        loop = asyncio.get_running_loop()
        count = 0
        while self._active:
            if not inbox:
                self._waiter = loop.create_future()
                await self._waiter
                self._waiter = None
                continue
            topic, body, headers, attempt = inbox.popleft()
            if space:
                for waiter in space:
                    if not waiter.done():
                        waiter.set_result(None)
                space.clear()
            delivery = _MemoryDelivery(self, topic, Message(body, headers), attempt)
            delivery.queue = queue
            self._handling = True
            try:
                await settled(delivery)
            finally:
                self._handling = False
            count += 1
            if count == _YIELD_EVERY:
                # A handler that never suspends would otherwise starve every other task.
                count = 0
                await asyncio.sleep(0)

    async def unsubscribe(self) -> None:
        if not self._active:
            return
        self._active = False
        node = self._node
        if self.queue is None:
            node.broadcast = tuple(sub for sub in node.broadcast if sub is not self)
        else:
            group = node.groups.get(self.queue)
            if group is not None:
                with contextlib.suppress(ValueError):
                    group.members.remove(self)
                # Nothing pending for a group is lost: it goes to the other members.
                while self._inbox:
                    item = self._inbox.popleft()
                    member = group.pick()
                    if member is None:
                        group.backlog.append(item)
                    else:
                        member.push(*item)
        self._broker._subs.discard(self)
        for waiter in self._space:
            if not waiter.done():
                waiter.set_result(None)
        idle = self._waiter
        if idle is not None and not idle.done():
            idle.set_result(None)
        task = self._task
        if task is asyncio.current_task() or task.done():
            return
        # Let a handler that is running finish; a worker that is idle ends at once.
        if not self._handling:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _check_pattern(topic: str) -> bool:
    """Validate a subscription topic; return whether it has wildcards."""
    if "*" not in topic and ">" not in topic:
        return False
    levels = topic.split(".")
    for index, level in enumerate(levels):
        if level == ">" and index != len(levels) - 1:
            raise InvalidTopic(f"'>' must be the last level of a topic: {topic!r}")
        if level not in ("*", ">") and ("*" in level or ">" in level):
            raise InvalidTopic(f"a wildcard must be a whole level: {topic!r}")
    return True


def _check_literal(topic: str) -> None:
    for level in topic.split("."):
        if level in ("*", ">"):
            raise InvalidTopic(f"cannot publish to a wildcard topic: {topic!r}")


def _matches(pattern: str, topic: str) -> bool:
    p_levels = pattern.split(".")
    t_levels = topic.split(".")
    for index, level in enumerate(p_levels):
        if level == ">":
            return len(t_levels) > index
        if index >= len(t_levels):
            return False
        if level != "*" and level != t_levels[index]:
            return False
    return len(p_levels) == len(t_levels)
