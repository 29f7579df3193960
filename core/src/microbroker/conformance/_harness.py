"""The machinery under the conformance cases: brokers made and cleaned up, inboxes, topics."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from .. import _plugins
from .._broker import Broker, Capabilities
from .._delivery import Delivery
from .._markers import hookimpl

BrokerFactory = Callable[[], Broker]
RestartServer = Callable[[], Any]


class Inbox:
    """A handler that records deliveries, and waits on them."""

    def __init__(self, name: str = "inbox") -> None:
        self.name = name
        self.deliveries: list[Delivery] = []
        self._changed = asyncio.Event()

    async def __call__(self, delivery: Delivery) -> None:
        self.record(delivery)

    def record(self, delivery: Delivery) -> None:
        self.deliveries.append(delivery)
        self._changed.set()

    @property
    def bodies(self) -> list[bytes]:
        return [d.message.body for d in self.deliveries]

    def __len__(self) -> int:
        return len(self.deliveries)

    async def wait_for(self, count: int, timeout: float) -> list[Delivery]:
        """Wait until at least ``count`` deliveries arrived; fail with what did arrive."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.deliveries) < count:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(
                    f"{self.name}: {len(self.deliveries)} of {count} messages arrived "
                    f"within {timeout}s"
                )
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                continue
        return self.deliveries

    async def wait_until(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"{self.name}: {what} did not happen within {timeout}s")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.1))
            except TimeoutError:
                continue


class ErrorCatcher:
    """A plugin recording what reaches the ``on_error`` hooks: ``with ErrorCatcher() as errors``."""

    def __init__(self) -> None:
        self.errors: list[tuple[BaseException, Delivery | None]] = []
        self._name: str | None = None
        self._changed = asyncio.Event()

    @hookimpl
    def on_error(self, error: BaseException, delivery: Delivery | None) -> None:
        self.errors.append((error, delivery))
        self._changed.set()

    def of(self, kind: type[BaseException]) -> list[tuple[Any, Delivery | None]]:
        """The errors of type ``kind``, with their deliveries."""
        return [(e, d) for e, d in self.errors if isinstance(e, kind)]

    async def wait_for(self, kind: type[BaseException], timeout: float, count: int = 1) -> None:
        """Wait until ``count`` errors of type ``kind`` were reported."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.of(kind)) < count:
            remaining = deadline - loop.time()
            if remaining <= 0:
                seen = [type(e).__name__ for e, _ in self.errors]
                raise AssertionError(
                    f"no {kind.__name__} reached the on_error hooks within {timeout}s "
                    f"(errors reported: {seen})"
                )
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.1))

    def __enter__(self) -> ErrorCatcher:
        self._name = _plugins.register_plugin(self, name=f"conformance-errors-{id(self)}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._name is not None:
            _plugins.unregister_plugin(self._name)
            self._name = None


class Harness:
    """What one conformance case works with. Every broker it makes is disconnected at the end."""

    def __init__(
        self,
        factory: BrokerFactory,
        restart_server: RestartServer | None,
        *,
        timeout: float,
        quiet: float,
    ) -> None:
        self._factory = factory
        self._restart = restart_server
        self.timeout = timeout
        """Seconds a message may take to arrive."""
        self.quiet = quiet
        """Seconds of silence after which no further delivery is expected."""
        self._brokers: list[Broker] = []
        self._run_id = uuid.uuid4().hex[:10]
        self._capabilities: Capabilities | None = None

    @property
    def capabilities(self) -> Capabilities:
        caps = self._capabilities
        if caps is None:
            caps = self._capabilities = self._factory().capabilities
        return caps

    @property
    def can_restart(self) -> bool:
        return self._restart is not None

    def new_broker(self) -> Broker:
        """A new broker, not connected, disconnected at the end of the case."""
        broker = self._factory()
        if not isinstance(broker, Broker):
            raise TypeError(
                f"broker_factory returned {type(broker).__name__}, not a microbroker.Broker"
            )
        self._brokers.append(broker)
        return broker

    async def broker(self) -> Broker:
        """A new, connected broker."""
        broker = self.new_broker()
        await asyncio.wait_for(broker.connect(), self.timeout)
        return broker

    def topic(self, case: str) -> str:
        """A topic unique to this run, valid on every transport (letters, digits, dots)."""
        return f"conformance.{case}.{self._run_id}.{uuid.uuid4().hex[:6]}"

    async def restart(self) -> None:
        """Restart the server (the ``restart_server`` fixture), in a thread if it is synchronous."""
        assert self._restart is not None
        if inspect.iscoroutinefunction(self._restart):
            await self._restart()
            return
        result = await asyncio.to_thread(self._restart)
        if inspect.isawaitable(result):
            await result

    async def settle(self) -> None:
        """One turn of the event loop after subscribing: no more.

        ``subscribe`` returns only once the subscription receives every
        message published afterwards; the suite holds brokers to that by not
        waiting here for subscriptions to propagate.
        """
        await asyncio.sleep(0)

    async def close(self) -> None:
        for broker in reversed(self._brokers):
            if broker.connected:
                # A case may already have failed, or the server be gone.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(broker.disconnect(), self.timeout)
        self._brokers.clear()

    def run(self, case: Callable[[Harness], Coroutine[Any, Any, None]], limit: float) -> None:
        """Run ``case`` in a fresh event loop, bounded by ``limit`` seconds, then clean up."""

        async def main() -> None:
            try:
                await asyncio.wait_for(case(self), limit)
            finally:
                await self.close()

        asyncio.run(main())


async def gather_limited(coros: list[Awaitable[None]], limit: int) -> None:
    """Await ``coros`` with at most ``limit`` in flight."""
    semaphore = asyncio.Semaphore(limit)

    async def one(coro: Awaitable[None]) -> None:
        async with semaphore:
            await coro

    await asyncio.gather(*(one(c) for c in coros))
