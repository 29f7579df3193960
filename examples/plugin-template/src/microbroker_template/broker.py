"""The broker: replace the in-process "server" below with your transport's client.

A broker implements five things and the core does the rest (argument and
header checks, the size limit, the plugins' event hooks, retries and dead
letters, the same for every broker):

- ``connected``, ``connect()``, ``disconnect()``: open and close the client;
- ``send(topic, message)``: hand the headers and body to the transport;
- ``receive(topic, deliver, queue=..., auto_ack=...)``: start the transport's
  subscription, and for each incoming message build a :class:`Delivery`
  (subclassed with the transport hooks ``on_ack``, ``on_nack``, ``on_reject``)
  and ``await deliver(delivery)``.

The toolkit it is built on is :mod:`microbroker.transport`: a per-subscription
:class:`~microbroker.transport.Mailbox` (queue, worker and overflow rule), the
``Delivery`` base, the retry policy, header names and checks.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import defaultdict
from typing import Any

from microbroker.transport import (
    Broker,
    Capabilities,
    Delivery,
    Handler,
    Mailbox,
    Message,
    NotConnected,
    Overflow,
    Subscriber,
)

from .options import TemplateOptions


class _Server:
    """Stands for the transport's server: every TemplateBroker of the process shares it."""

    def __init__(self) -> None:
        self._topics: dict[str, list[TemplateSubscriber]] = defaultdict(list)
        self._turn = itertools.count()

    def join(self, subscriber: TemplateSubscriber) -> None:
        self._topics[subscriber.topic].append(subscriber)

    def leave(self, subscriber: TemplateSubscriber) -> None:
        members = self._topics.get(subscriber.topic, [])
        if subscriber in members:
            members.remove(subscriber)

    def members(self, topic: str, queue: str) -> list[TemplateSubscriber]:
        return [s for s in self._topics.get(topic, []) if s.queue == queue and s.active]

    async def route(self, topic: str, message: Message) -> None:
        """Every broadcast subscriber gets the message, and one member of each queue group."""
        groups: dict[str, list[TemplateSubscriber]] = defaultdict(list)
        for subscriber in list(self._topics.get(topic, [])):
            if subscriber.queue is None:
                await subscriber.put(message, 1)
            else:
                groups[subscriber.queue].append(subscriber)
        for members in groups.values():
            await members[next(self._turn) % len(members)].put(message, 1)


_SERVER = _Server()


class TemplateBroker(Broker):
    """An in-process broker: broadcast, queue groups, ack and redelivery."""

    name = "template"
    capabilities = Capabilities(queue_groups=True, ack=True, at_least_once=True, ordering=True)

    def __init__(self, address: str | None = None, **options: Any) -> None:
        self.settings = TemplateOptions.from_options(options)
        super().__init__(address, **self.settings.as_dict())
        self._connected = False
        self._subscribers: set[TemplateSubscriber] = set()

    @property
    def connected(self) -> bool:
        return self._connected

    async def connect(self) -> None:
        self._connected = True

    async def disconnect(self) -> None:
        """Every subscription ends after its running handler, and what it held goes back."""
        self._connected = False
        await asyncio.gather(*(s.unsubscribe() for s in list(self._subscribers)))

    async def send(self, topic: str, message: Message, **options: Any) -> None:
        if options:
            raise TypeError(f"template publish() takes no option(s) {', '.join(options)}")
        if not self._connected:  # disconnected before this publish got its turn
            raise NotConnected("the template broker is not connected")
        # A real transport writes the headers and body to its connection here. The copy
        # stands for that: what the subscriber gets is not the publisher's object.
        await _SERVER.route(topic, Message(bytes(message.body), dict(message.headers)))

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
            raise TypeError(f"template subscribe() takes no option(s) {', '.join(options)}")
        subscriber = TemplateSubscriber(self, topic, deliver, queue, auto_ack)
        _SERVER.join(subscriber)
        self._subscribers.add(subscriber)
        return subscriber

    def forget(self, subscriber: TemplateSubscriber) -> None:
        """Called by a subscription that ended."""
        self._subscribers.discard(subscriber)


class TemplateDelivery(Delivery):
    """A delivery that knows how to settle on the transport: here, requeue on nack."""

    __slots__ = ("_subscriber",)

    # Ack tells this transport nothing: the dispatcher then records it without awaiting.
    acks_locally = True

    def __init__(self, subscriber: TemplateSubscriber, message: Message, attempt: int) -> None:
        super().__init__(subscriber.topic, message, queue=subscriber.queue, attempt=attempt)
        self._subscriber = subscriber

    async def on_nack(self, delay: float) -> None:
        # ``delay`` follows the subscription's retry policy; the core gives up, not us.
        asyncio.get_running_loop().call_later(
            delay, self._subscriber.redeliver, self.message, self.attempt + 1
        )


class TemplateSubscriber(Subscriber):
    """One subscription: a mailbox (bounded queue and worker) in front of ``deliver``."""

    def __init__(
        self,
        broker: TemplateBroker,
        topic: str,
        deliver: Handler,
        queue: str | None,
        auto_ack: bool,
    ) -> None:
        super().__init__(topic, queue, auto_ack)
        self._broker = broker
        self._deliver = deliver
        # BLOCK: a publish to a full subscription waits for room (up to publish_timeout).
        self._mailbox: Mailbox[tuple[Message, int]] = Mailbox(
            self._handle,
            capacity=broker.settings.max_pending,
            overflow=Overflow.BLOCK,
            put_timeout=broker.settings.publish_timeout,
            name=f"template subscription to {topic!r}",
        )

    @property
    def active(self) -> bool:
        return not self._mailbox.closed

    async def _handle(self, item: tuple[Message, int]) -> None:
        message, attempt = item
        await self._deliver(TemplateDelivery(self, message, attempt))

    async def put(self, message: Message, attempt: int) -> None:
        """A new message from the server; waits while the mailbox is full."""
        if not await self._mailbox.put((message, attempt)):
            self._hand_back(message, attempt)

    def redeliver(self, message: Message, attempt: int) -> None:
        """A message accepted before (nacked, or handed back): taken at once."""
        if not self._mailbox.offer((message, attempt)):
            self._hand_back(message, attempt)

    def _hand_back(self, message: Message, attempt: int) -> None:
        """This subscription ended: a queue group's message goes to another member."""
        if self.queue is not None:
            members = _SERVER.members(self.topic, self.queue)
            if members:
                members[0].redeliver(message, attempt)

    async def unsubscribe(self) -> None:
        if self._mailbox.closed:
            return
        _SERVER.leave(self)
        self._broker.forget(self)
        for message, attempt in await self._mailbox.close():
            self._hand_back(message, attempt)
