"""Testing a Service: run it in the test, with no server and no environment to set.

::

    from microbroker import testing

    async def test_an_order_is_billed() -> None:
        async with testing.run(service) as t:
            await service.event("orders.created").publish(OrderCreated(1, "book"))
            on_order.mock.assert_called_once_with(OrderCreated(1, "book"))

:func:`run` gives the service an in-process broker for the test (whatever
``MICRO_BROKER`` says, and whichever broker the service was made with), starts
it, and gives it back when the block ends. While it runs:

- a publish returns after the subscribers it reached have run, cascades
  included (a subscriber that publishes, RPC calls);
- an exception in a handler (or a body a subscriber cannot decode) is raised
  by the publish that caused it, and by the end of the block: the test fails
  with it instead of logging it;
- each subscriber records its calls: ``handler.mock`` (a
  :class:`unittest.mock.MagicMock`, called with the decoded message) and
  :meth:`TestRun.calls` (message and context).

``run(service, broker=...)`` runs it on a real broker instead (an
integration test): publishes then return as they do in production, and
:meth:`TestRun.wait_for` waits for the calls. It works under pytest-asyncio
and plain ``asyncio.run``; the pytest plugin installed with microbroker adds
the ``microbroker_test`` fixture, which checks that every run ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from unittest import mock

from ._broker import Handler, Subscriber
from ._context import Context
from ._delivery import Delivery
from ._errors import GivenUp, MicrobrokerError
from ._markers import hookimpl
from ._message import Message
from ._plugins import register_plugin, unregister_plugin
from ._server import SubscriberSpec
from ._service import Service
from .brokers.memory import MemoryBroker

__all__ = ["Call", "TestRun", "TestSession", "run"]

_runs = itertools.count(1)
# Set while a handler of the test broker runs: its publishes do not wait (the outermost
# publish waits for the whole cascade), or a handler would wait for itself.
_in_handler: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "microbroker_testing_in_handler", default=False
)


@dataclass(frozen=True, slots=True)
class Call:
    """One call of a subscriber: the decoded message and its context."""

    message: Any
    context: Context

    @property
    def metadata(self) -> Any:
        return self.context.metadata


class _Recorder:
    """The outermost middleware of one subscriber: records each call."""

    def __init__(self, spec: SubscriberSpec) -> None:
        self.spec = spec
        self.mock = mock.MagicMock(name=getattr(spec.handler, "__qualname__", "subscriber"))
        self.calls: list[Call] = []
        self.changed = asyncio.Event()

    async def __call__(
        self, call: Callable[[Any, Context], Awaitable[Any]], message: Any, ctx: Context
    ) -> Any:
        self.calls.append(Call(message, ctx))
        self.mock(message)
        self.changed.set()
        return await call(message, ctx)


class _Errors:
    """The ``on_error`` hook of a run: what went wrong, in order."""

    def __init__(self) -> None:
        self.seen: list[tuple[BaseException, Delivery | None]] = []

    @hookimpl
    def on_error(self, error: BaseException, delivery: Delivery | None) -> None:
        self.seen.append((error, delivery))


class _TestBroker(MemoryBroker):
    """The memory broker, whose outermost publishes wait for what they cause."""

    name = "testing"

    def __init__(self, address: str, run: TestRun) -> None:
        super().__init__(address)
        self._run = run

    async def send(self, topic: str, message: Message, **options: Any) -> None:
        await super().send(topic, message, **options)
        if not _in_handler.get():
            await self._run._settle()

    async def receive(
        self,
        topic: str,
        deliver: Handler,
        *,
        queue: str | None,
        auto_ack: bool,
        **options: Any,
    ) -> Subscriber:
        async def in_handler(delivery: Delivery) -> None:
            token = _in_handler.set(True)
            try:
                await deliver(delivery)
            finally:
                _in_handler.reset(token)

        return await super().receive(topic, in_handler, queue=queue, auto_ack=auto_ack, **options)


class TestRun:
    """A service running in a test: made by :func:`run`."""

    def __init__(self, service: Service, *, raise_errors: bool, timeout: float) -> None:
        self.service = service
        #: Raise handler errors from the publishes that caused them, and at the end.
        self.raise_errors = raise_errors
        #: Seconds a publish waits for its subscribers before it raises TimeoutError.
        self.timeout = timeout
        self._recorders: dict[int, _Recorder] = {}
        self._errors = _Errors()
        self._raised = 0

    @property
    def broker(self) -> Any:
        """The broker the service runs on in this test."""
        return self.service.broker

    @property
    def errors(self) -> list[BaseException]:
        """Every error reported while the service ran (handler errors, decode errors...)."""
        return [error for error, _ in self._errors.seen]

    def _recorder(self, handler: Any) -> _Recorder:
        recorder = self._recorders.get(id(handler))
        if recorder is None:
            known = ", ".join(
                getattr(r.spec.handler, "__qualname__", repr(r.spec.handler))
                for r in self._recorders.values()
            )
            raise LookupError(f"{handler!r} is not a subscriber of this service (it has: {known})")
        return recorder

    def mock(self, handler: Any) -> mock.MagicMock:
        """The mock of ``handler`` (a subscriber of the service), called with each message."""
        return self._recorder(handler).mock

    def calls(self, handler: Any) -> list[Call]:
        """The calls of ``handler`` so far: message and context of each."""
        return list(self._recorder(handler).calls)

    async def wait_for(
        self, handler: Any, count: int = 1, timeout: float | None = None
    ) -> list[Call]:
        """Wait until ``handler`` was called ``count`` times (for a run on a real broker)."""
        recorder = self._recorder(handler)
        async with asyncio.timeout(self.timeout if timeout is None else timeout):
            while len(recorder.calls) < count:
                recorder.changed.clear()
                await recorder.changed.wait()
        return list(recorder.calls)

    async def drain(self) -> None:
        """Wait until every message published so far was handled (in-process runs)."""
        await self._settle()

    async def _settle(self) -> None:
        broker = self.service.broker
        if isinstance(broker, MemoryBroker):
            try:
                async with asyncio.timeout(self.timeout):
                    await broker.idle()
            except TimeoutError:
                raise TimeoutError(
                    f"the service's subscribers did not finish within {self.timeout}s "
                    "(testing.run(..., timeout=) waits longer)"
                ) from None
        self._raise_new_errors()

    def _raise_new_errors(self) -> None:
        if not self.raise_errors:
            return
        seen = self._errors.seen
        fresh = seen[self._raised :]
        self._raised = len(seen)
        for error, _ in fresh:
            # A give-up follows the error that caused it, which is the one to raise.
            if not isinstance(error, GivenUp):
                raise error
        for error, _ in fresh:
            raise error

    def _install(self) -> None:
        for spec in self.service.server.subscribers:
            recorder = _Recorder(spec)
            self._recorders[id(spec.handler)] = recorder
            spec.middleware.insert(0, recorder)
            # A bound method or a builtin takes no attribute: t.mock(handler) then.
            with contextlib.suppress(AttributeError, TypeError):
                spec.handler.mock = recorder.mock  # type: ignore[attr-defined]

    def _uninstall(self) -> None:
        for recorder in self._recorders.values():
            spec = recorder.spec
            if recorder in spec.middleware:
                spec.middleware.remove(recorder)
            if getattr(spec.handler, "mock", None) is recorder.mock:
                with contextlib.suppress(AttributeError, TypeError):
                    delattr(spec.handler, "mock")


@asynccontextmanager
async def run(
    service: Service,
    *,
    broker: Any = None,
    raise_errors: bool = True,
    timeout: float = 10.0,
) -> AsyncIterator[TestRun]:
    """Run ``service`` for the block: ``async with testing.run(service) as t:``.

    :param broker: a broker to run on (a real one, for an integration test);
        default: an in-process broker of the test's own, in which a publish
        returns after the subscribers it reached have run.
    :param raise_errors: raise a handler's exception (or a :class:`DecodeError`)
        from the publish that caused it and at the end of the block; with
        ``False`` errors are only collected in :attr:`TestRun.errors` and
        retries run as they would in production.
    :param timeout: seconds a publish waits for its subscribers.
    """
    if service.server.started:
        raise MicrobrokerError(f"{service!r} is already running: testing.run() starts it itself")
    t = TestRun(service, raise_errors=raise_errors, timeout=timeout)
    original = service._broker
    test_broker = broker if broker is not None else _TestBroker(f"testing-{next(_runs)}", t)
    name = register_plugin(t._errors, name=f"microbroker-testing-{id(t)}")
    service.broker = test_broker
    t._install()
    try:
        await service.start()
        try:
            yield t
            if isinstance(test_broker, _TestBroker):
                await t._settle()
            else:
                t._raise_new_errors()
        finally:
            await service.stop()
            if test_broker.connected:
                await test_broker.disconnect()
    finally:
        t._uninstall()
        unregister_plugin(name)
        if original is not None:
            service.broker = original
        else:
            # Made on first use again (from the environment), as before the run.
            service._broker = None


class TestSession:
    """What the ``microbroker_test`` pytest fixture gives a test: :func:`run`, counted.

    When the test ends, a run started and never ended (an ``async with`` left
    open, a service still running) fails it.
    """

    def __init__(self) -> None:
        self.started = 0
        self.ended = 0

    def run(self, service: Service, **options: Any) -> _CountedRun:
        """:func:`run`, counted: ``async with microbroker_test.run(service) as t:``."""
        return _CountedRun(self, service, options)

    def check(self) -> None:
        """Raise when a run was started and never ended."""
        left = self.started - self.ended
        if left:
            raise MicrobrokerError(
                f"{left} testing.run() block(s) started and never ended: "
                "use 'async with microbroker_test.run(service) as t:'"
            )


class _CountedRun:
    """``async with`` of one :meth:`TestSession.run`: an end counts only through ``__aexit__``."""

    def __init__(self, session: TestSession, service: Service, options: dict[str, Any]) -> None:
        self._session = session
        self._context = run(service, **options)

    async def __aenter__(self) -> TestRun:
        self._session.started += 1
        return await self._context.__aenter__()

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        try:
            return await self._context.__aexit__(*exc_info)
        finally:
            self._session.ended += 1
