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
  subscription, or to a member of the same group) after the backoff of the
  subscription's retry policy, which also decides when it is given up;
- a subscription holds at most ``max_pending`` undelivered messages
  (a :class:`~microbroker.transport.Mailbox` with ``Overflow.BLOCK``): a
  publish to a full one waits for room, up to ``publish_timeout`` seconds,
  then raises :class:`~microbroker.PublishError`: memory never grows without
  bound and nothing is dropped silently;
- ``max_message_size`` (default none) limits the messages it carries, for
  tests of code that must live with a small limit; ``max_headers`` and
  ``max_header_bytes`` (default 256 and 64 KiB, as every broker's) limit
  their headers;
- topics may use NATS-style wildcards in subscriptions: ``.`` separates
  levels, ``*`` matches one level, ``>`` the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections import deque
from typing import Any

from .._broker import (
    DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_MAX_HEADERS,
    Broker,
    Capabilities,
    Handler,
    Subscriber,
)
from .._delivery import Delivery
from .._errors import InvalidTopic, NotConnected
from .._mailbox import Mailbox, Overflow
from .._message import Message
from .._topics import Wildcards

_WILDCARDS = Wildcards(separator=".", one="*", many=">")

# (topic, body, headers, attempt): the topic differs from the subscription's for a pattern.
_Item = tuple[str, bytes, dict[str, str], int]


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
        max_message_size: int | None = None,
        max_headers: int | None = DEFAULT_MAX_HEADERS,
        max_header_bytes: int | None = DEFAULT_MAX_HEADER_BYTES,
    ) -> None:
        """Create a memory broker.

        :param address: the name of the in-process bus; brokers with the same
            address share topics (default ``"default"``).
        :param max_pending: undelivered messages a subscription may hold before
            a publish to it waits.
        :param publish_timeout: seconds a publish waits for room before it
            raises :class:`~microbroker.PublishError`.
        :param max_message_size: the largest message (body and headers, in
            bytes) it carries; ``None`` for no limit but memory's.
        :param max_headers: the most headers a message may have (``None``: no limit).
        :param max_header_bytes: the most bytes (names and UTF-8 values) a
            message's headers may take (``None``: no limit).
        """
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        if max_message_size is not None and max_message_size < 1:
            raise ValueError("max_message_size must be at least 1 (or None)")
        if (max_headers is not None and max_headers < 0) or (
            max_header_bytes is not None and max_header_bytes < 0
        ):
            raise ValueError("max_headers and max_header_bytes must be at least 0 (or None)")
        super().__init__(
            address,
            max_pending=max_pending,
            publish_timeout=publish_timeout,
            max_message_size=max_message_size,
            max_headers=max_headers,
            max_header_bytes=max_header_bytes,
        )
        self.max_pending = max_pending
        self.publish_timeout = publish_timeout
        declared = self.capabilities
        if (max_message_size, max_headers, max_header_bytes) != (
            declared.max_message_size,
            declared.max_headers,
            declared.max_header_bytes,
        ):
            self.capabilities = dataclasses.replace(
                declared,
                max_message_size=max_message_size,
                max_headers=max_headers,
                max_header_bytes=max_header_bytes,
            )
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

    async def send(self, topic: str, message: Message, **options: Any) -> None:
        if options:
            raise TypeError(f"memory broker publish() takes no option(s) {', '.join(options)}")
        bus = self._bus
        if bus is None:  # disconnected before this publish got its turn
            raise NotConnected("memory broker is not connected")
        if "*" in topic or ">" in topic:
            _check_literal(topic)
        body = message.body
        if type(body) is not bytes:
            body = bytes(body)
        exact = bus.exact.get(topic)
        if exact is not None:
            await exact.deliver(topic, body, message.headers)
        if bus.patterns:
            for pattern, node in list(bus.patterns.items()):
                if _matches(pattern, topic):
                    await node.deliver(topic, body, message.headers)

    async def idle(self) -> None:
        """Wait until every subscription of this broker has handled all it was given.

        Redeliveries that are due count: it returns when no handler is
        running, no message waits in a mailbox and none is scheduled to come
        back. For tests (``microbroker.testing`` waits on it after each publish).
        """
        while True:
            busy = [sub for sub in self._subs if sub.busy]
            if not busy:
                return
            for sub in busy:
                await sub.settled()

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
            raise TypeError(f"memory broker subscribe() takes no option(s) {', '.join(options)}")
        bus = self._bus
        assert bus is not None
        wildcard = _check_pattern(topic)
        table = bus.patterns if wildcard else bus.exact
        node = table.get(topic)
        if node is None:
            node = table[topic] = _TopicNode()
        sub = _MemorySubscriber(self, node, topic, deliver, queue, auto_ack)
        node.add(sub)
        self._subs.add(sub)
        return sub


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
        self.backlog: deque[_Item] = deque()

    def pick(self) -> _MemorySubscriber | None:
        members = self.members
        if not members:
            return None
        index = self.next % len(members)
        self.next = index + 1
        return members[index]

    def hand(self, item: _Item) -> None:
        """Give an accepted message to a member now, or keep it for the next one to join."""
        member = self.pick()
        if member is None:
            self.backlog.append(item)
        else:
            member.push(item)


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
            sub.push(group.backlog.popleft())

    async def deliver(self, topic: str, body: bytes, headers: dict[str, str]) -> None:
        for sub in self.broadcast:
            await sub.offer((topic, body, dict(headers), 1))
        for group in self.groups.values():
            member = group.pick()
            if member is None:
                group.backlog.append((topic, body, dict(headers), 1))
            else:
                await member.offer((topic, body, dict(headers), 1))


class _MemoryDelivery(Delivery):
    __slots__ = ("_sub",)

    acks_locally = True  # an ack only ends the delivery; a nack redelivers

    def __init__(self, sub: _MemorySubscriber, topic: str, message: Message, attempt: int) -> None:
        super().__init__(topic, message, queue=sub.queue, attempt=attempt)
        self._sub = sub

    async def on_nack(self, delay: float) -> None:
        self._sub.redeliver(self, delay)

    async def on_release(self) -> None:
        # Not delivered, so not an attempt: it comes back with the same count.
        message = self.message
        self._sub.push((self.topic, message.body, message.headers, self.attempt))


class _MemorySubscriber(Subscriber):
    def __init__(
        self,
        broker: MemoryBroker,
        node: _TopicNode,
        topic: str,
        deliver: Handler,
        queue: str | None,
        auto_ack: bool,
    ) -> None:
        super().__init__(topic, queue, auto_ack)
        self._broker = broker
        self._node = node
        self._deliver = deliver
        self._active = True
        # Redeliveries scheduled and not yet back in the mailbox.
        self._due = 0
        self._back: asyncio.Event | None = None
        self._mailbox: Mailbox[_Item] = Mailbox(
            self._handle,
            capacity=broker.max_pending,
            overflow=Overflow.BLOCK,
            put_timeout=broker.publish_timeout,
            name=f"memory subscription to {topic!r}",
        )

    @property
    def active(self) -> bool:
        return self._active

    def _handle(self, item: _Item) -> Any:
        topic, body, headers, attempt = item
        return self._deliver(_MemoryDelivery(self, topic, Message(body, headers), attempt))

    async def offer(self, item: _Item) -> None:
        """Queue a new message, waiting for room when the mailbox is full (backpressure)."""
        if await self._mailbox.put(item):
            return
        # It left while the publish waited: a group's message goes to the rest of the
        # group (or its backlog); a broadcast subscription that left needs none.
        group = self._node.groups.get(self.queue) if self.queue is not None else None
        if group is not None:
            member = group.pick()
            if member is None:
                group.backlog.append(item)
            else:
                await member.offer(item)

    def push(self, item: _Item) -> None:
        """Queue a message accepted before (a redelivery, a group's hand-back) at once."""
        if not self._mailbox.offer(item):
            self._hand_back(item)

    def redeliver(self, delivery: Delivery, delay: float) -> None:
        message = delivery.message
        item = (delivery.topic, message.body, message.headers, delivery.attempt + 1)
        if delay > 0:
            self._due += 1
            asyncio.get_running_loop().call_later(delay, self._come_back, item)
        else:
            self.push(item)

    def _come_back(self, item: _Item) -> None:
        self._due -= 1
        self.push(item)
        back = self._back
        if back is not None:
            back.set()

    @property
    def busy(self) -> bool:
        """Whether a message is being handled, waits in the mailbox, or is due back."""
        mailbox = self._mailbox
        return bool(len(mailbox) or mailbox.handling or (self._due and self._active))

    async def settled(self) -> None:
        """Wait until the mailbox is empty and idle, and no redelivery is due."""
        while self.busy:
            await self._mailbox.join()
            if self._due and self._active:
                back = self._back = asyncio.Event()
                await back.wait()
                self._back = None

    def _hand_back(self, item: _Item) -> None:
        """A message this subscription can no longer take: its group's, if it has one."""
        if self.queue is not None:
            group = self._node.groups.get(self.queue)
            if group is not None:
                group.hand(item)

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
        self._broker._subs.discard(self)
        # Nothing pending for a group is lost: it goes to the other members (or the backlog).
        for item in await self._mailbox.close():
            self._hand_back(item)


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
