"""The broker: replace the in-process channel below with your transport's client.

What a broker must do, and where this one does it:

- ``connect`` / ``disconnect``: open and close the client; ``connected`` says which.
- ``publish``: ``self._check_publish`` first (standard errors), then hand the
  headers and body to the transport.
- ``subscribe``: ``self._check_subscribe`` first; for each incoming message make
  a :class:`microbroker.Delivery` (subclassed to settle on the transport) and
  call :func:`microbroker.dispatch`, which applies ``auto_ack`` and turns a
  handler exception into a nack the same way for every broker.
- ``capabilities``: declare only what you deliver; the conformance suite
  holds you to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import defaultdict
from typing import Any

import microbroker
from microbroker import Capabilities, Delivery, Handler, Message, Subscriber

from .options import TemplateOptions

# The "server": every TemplateBroker in the process shares these channels.
_channels: dict[str, list[_TemplateSubscriber]] = defaultdict(list)
_round_robin = itertools.count()


class TemplateBroker(microbroker.Broker):
    """An in-process broker: broadcast, queue groups, ack and redelivery."""

    name = "template"
    capabilities = Capabilities(queue_groups=True, ack=True, at_least_once=True, ordering=True)

    def __init__(self, address: str | None = None, *, redelivery_delay: float = 0.01) -> None:
        super().__init__(address, redelivery_delay=redelivery_delay)
        self.settings = TemplateOptions(redelivery_delay=redelivery_delay)
        self._connected = False
        self._subscribers: set[_TemplateSubscriber] = set()

    @property
    def connected(self) -> bool:
        return self._connected

    async def connect(self) -> None:
        self._connected = True

    async def disconnect(self) -> None:
        self._connected = False
        for subscriber in list(self._subscribers):
            await subscriber.unsubscribe()

    async def publish(self, topic: str, message: Message, **options: Any) -> None:
        self._check_publish(topic, message)
        subscribers = _channels.get(topic, [])
        groups: dict[str, list[_TemplateSubscriber]] = defaultdict(list)
        for subscriber in subscribers:
            if subscriber.queue is None:
                subscriber.enqueue(message, 1)
            else:
                groups[subscriber.queue].append(subscriber)
        for members in groups.values():
            members[next(_round_robin) % len(members)].enqueue(message, 1)

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
        subscriber = _TemplateSubscriber(self, topic, handler, queue, auto_ack)
        _channels[topic].append(subscriber)
        self._subscribers.add(subscriber)
        return subscriber


class _TemplateDelivery(Delivery):
    """A Delivery that knows how to settle on the transport: here, requeue on nack."""

    __slots__ = ("_subscriber",)

    def __init__(self, subscriber: _TemplateSubscriber, message: Message, attempt: int) -> None:
        super().__init__(subscriber.topic, message, queue=subscriber.queue, attempt=attempt)
        self._subscriber = subscriber

    async def _settle_nack(self, delay: float | None) -> None:
        wait = self._subscriber.broker.settings.redelivery_delay if delay is None else delay
        asyncio.get_running_loop().call_later(
            wait, self._subscriber.enqueue, self.message, self.attempt + 1
        )


class _TemplateSubscriber(Subscriber):
    def __init__(
        self,
        broker: TemplateBroker,
        topic: str,
        handler: Handler,
        queue: str | None,
        auto_ack: bool,
    ) -> None:
        super().__init__(topic, queue, auto_ack)
        self.broker = broker
        self._handler = handler
        self._inbox: asyncio.Queue[tuple[Message, int]] = asyncio.Queue()
        self._task = asyncio.create_task(self._run())

    @property
    def active(self) -> bool:
        return not self._task.done()

    def enqueue(self, message: Message, attempt: int) -> None:
        if self.active:
            self._inbox.put_nowait((Message(message.body, dict(message.headers)), attempt))

    async def _run(self) -> None:
        while True:
            message, attempt = await self._inbox.get()
            await microbroker.dispatch(
                self._handler, _TemplateDelivery(self, message, attempt), self.auto_ack
            )

    async def unsubscribe(self) -> None:
        if self in _channels.get(self.topic, []):
            _channels[self.topic].remove(self)
        self.broker._subscribers.discard(self)
        if self._task is not asyncio.current_task():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
