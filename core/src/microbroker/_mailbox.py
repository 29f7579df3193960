"""The per-subscription mailbox: a bounded queue, its one worker, and a declared overflow rule.

What a broker does when a subscription's handler is slower than its messages
arrive is a promise users rely on, so each mailbox declares it
(:class:`Overflow`) and none ever drops a message silently:

- ``BLOCK``: the source waits for room (an in-process publisher, a fetch loop);
- ``PAUSE``: the connection stops reading (:class:`Flow`) past a high-water
  mark and reads again when the mailboxes it feeds have drained to half;
- ``REFUSE``: :meth:`Mailbox.offer` answers ``False`` when full, and the
  transport tells the sender (an HTTP 503, a nack, an error to ``on_error``).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from ._errors import PublishError

T = TypeVar("T")

logger = logging.getLogger("microbroker.mailbox")

# A handler that never suspends would starve every other task: the worker yields this often.
_YIELD_EVERY = 256


class Overflow(enum.Enum):
    """What a full mailbox does with the next message."""

    BLOCK = "block"
    """:meth:`Mailbox.put` waits for room (bounded by a timeout): the source is held back."""
    PAUSE = "pause"
    """The message is taken; past the high-water mark the connection stops reading."""
    REFUSE = "refuse"
    """:meth:`Mailbox.offer` answers ``False``: the transport tells the sender it was refused."""


class Flow:
    """Reading from one connection, paused and resumed for the mailboxes it feeds.

    ``pause()`` is called when more than ``high`` messages wait in those
    mailboxes, ``resume()`` once they are down to ``low`` (half of ``high`` by
    default). One ``Flow`` per connection, shared by its subscriptions.
    """

    __slots__ = ("_pause", "_resume", "high", "low", "paused", "pending")

    def __init__(
        self,
        pause: Callable[[], None],
        resume: Callable[[], None],
        *,
        high: int,
        low: int | None = None,
    ) -> None:
        if high < 1:
            raise ValueError("high must be at least 1")
        self._pause = pause
        self._resume = resume
        self.high = high
        self.low = high // 2 if low is None else low
        #: Messages taken and not yet handed to a handler.
        self.pending = 0
        self.paused = False

    def add(self, count: int = 1) -> None:
        """``count`` messages were queued."""
        self.pending += count
        if self.pending > self.high and not self.paused:
            self.paused = True
            self._pause()

    def remove(self, count: int = 1) -> None:
        """``count`` messages left the queues (handed to a handler, or discarded)."""
        self.pending -= count
        if self.paused and self.pending <= self.low:
            self.paused = False
            self._resume()

    def reapply(self) -> None:
        """Pause again if needed: for a connection made anew (a reconnect reads from the start)."""
        self.paused = False
        if self.pending > self.high:
            self.paused = True
            self._pause()


class Mailbox(Generic[T]):
    """The queue and worker of one subscription: items go to ``deliver`` one at a time, in order.

    Items are whatever the transport queues (a :class:`~microbroker.Delivery`,
    or the raw parts of one, built into a delivery by ``deliver``).
    ``deliver`` is normally the dispatcher ``Broker.subscribe`` gave the
    transport's ``receive``, or a function that builds the delivery and calls it.

    :param capacity: items the mailbox holds before its overflow rule applies.
    :param overflow: see :class:`Overflow`.
    :param flow: the connection's :class:`Flow`, required with ``Overflow.PAUSE``.
    :param put_timeout: seconds :meth:`put` waits for room before it raises
        :class:`~microbroker.PublishError` (``Overflow.BLOCK``).
    """

    __slots__ = (
        "_closed",
        "_deliver",
        "_handling",
        "_idle",
        "_items",
        "_room",
        "_task",
        "_waiter",
        "capacity",
        "flow",
        "name",
        "overflow",
        "put_timeout",
    )

    def __init__(
        self,
        deliver: Callable[[T], Awaitable[None]],
        *,
        capacity: int = 10_000,
        overflow: Overflow = Overflow.BLOCK,
        flow: Flow | None = None,
        put_timeout: float = 30.0,
        name: str = "microbroker-mailbox",
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        if overflow is Overflow.PAUSE and flow is None:
            raise ValueError("Overflow.PAUSE needs the connection's Flow")
        self._deliver = deliver
        self.capacity = capacity
        self.overflow = overflow
        self.flow = flow
        self.put_timeout = put_timeout
        self.name = name
        self._items: deque[T] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._room: list[asyncio.Future[None]] = []
        self._idle: asyncio.Future[None] | None = None
        self._handling = False
        self._closed = False
        self._task = asyncio.get_running_loop().create_task(self._run(), name=name)

    def __len__(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def handling(self) -> bool:
        """Whether an item is in the handler right now."""
        return self._handling

    @property
    def task(self) -> asyncio.Task[None]:
        """The worker's task (a handler that runs in it is running in this task)."""
        return self._task

    # Taking items ---------------------------------------------------------------------

    def offer(self, item: T) -> bool:
        """Queue ``item`` now; ``False`` when the mailbox is closed, or full under ``REFUSE``.

        Under ``BLOCK`` an offer is always taken, beyond the capacity if need
        be: it is for items the mailbox has accepted before (a redelivery, a
        group's hand-back); new items from a source go through :meth:`put`.
        """
        if self._closed:
            return False
        items = self._items
        if len(items) >= self.capacity and self.overflow is Overflow.REFUSE:
            return False
        items.append(item)
        flow = self.flow
        if flow is not None:
            flow.add()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        return True

    async def put(self, item: T) -> bool:
        """Queue ``item``, waiting for room while the mailbox is full (``Overflow.BLOCK``).

        Returns ``False`` when the mailbox closed meanwhile (the item was not
        taken: give it to someone else). Raises
        :class:`~microbroker.PublishError` after ``put_timeout`` seconds
        without room, and at once when called from the mailbox's own handler
        (it would wait for itself for ever).
        """
        if len(self._items) >= self.capacity and not self._closed:
            await self._wait_for_room()
        return self.offer(item)

    async def _wait_for_room(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.put_timeout
        while len(self._items) >= self.capacity and not self._closed:
            if asyncio.current_task() is self._task:
                raise PublishError(
                    f"{self.name} is full ({self.capacity} pending) and the publish comes "
                    "from its own handler: it would wait for ever"
                )
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise PublishError(
                    f"{self.name} still had {len(self._items)} pending messages after "
                    f"{self.put_timeout}s: its handler is too slow or stuck"
                )
            room = loop.create_future()
            self._room.append(room)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(room, remaining)

    # The worker ----------------------------------------------------------------------

    async def _run(self) -> None:
        items = self._items
        room = self._room
        deliver = self._deliver
        loop = asyncio.get_running_loop()
        count = 0
        while not self._closed:
            if not items:
                idle = self._idle
                if idle is not None and not idle.done():
                    idle.set_result(None)
                self._waiter = loop.create_future()
                await self._waiter
                self._waiter = None
                continue
            item = items.popleft()
            if room:
                for waiter in room:
                    if not waiter.done():
                        waiter.set_result(None)
                room.clear()
            flow = self.flow
            if flow is not None:
                flow.remove()
            self._handling = True
            try:
                await deliver(item)
            except Exception:
                # The dispatcher reports handler errors itself: this is a hook or transport bug.
                logger.exception("%s: delivering a message failed", self.name)
            finally:
                self._handling = False
            count += 1
            if count == _YIELD_EVERY:
                count = 0
                await asyncio.sleep(0)

    async def join(self) -> None:
        """Wait until every item queued so far was handled (at once from its own handler)."""
        if not self._items and not self._handling:
            return
        if asyncio.current_task() is self._task or self._task.done():
            return
        idle = self._idle
        if idle is None or idle.done():
            idle = self._idle = asyncio.get_running_loop().create_future()
        await asyncio.shield(idle)

    async def close(self) -> list[T]:
        """Stop: take no more, let a running handler finish, and return what was not handled.

        The transport hands those back (to another member of a group, or to
        the server with a nack); nothing is dropped here.
        """
        if self._closed:
            return []
        self._closed = True
        left = list(self._items)
        self._items.clear()
        if left and self.flow is not None:
            self.flow.remove(len(left))
        for waiter in self._room:
            if not waiter.done():
                waiter.set_result(None)
        self._room.clear()
        sleeping = self._waiter
        if sleeping is not None and not sleeping.done():
            sleeping.set_result(None)
        idle = self._idle
        if idle is not None and not idle.done():
            idle.set_result(None)
        task = self._task
        if task is asyncio.current_task() or task.done():
            return left
        if not self._handling:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return left
