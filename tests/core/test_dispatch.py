"""``microbroker.dispatch``: the settlement rules every broker applies to each delivery.

Brokers apply them through ``dispatch(handler, delivery, auto_ack)`` or a
``dispatcher(handler, auto_ack)`` made once per subscription; a typed
subscriber's handler settles by itself under the dispatcher. All three ways
must settle alike.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

import microbroker
from microbroker import Delivery, Message
from microbroker._server import Subscription, _InFlight, _TypedHandler

Way = Callable[[microbroker.Handler, Delivery, bool], Awaitable[None]]


async def _by_dispatch(handler: microbroker.Handler, delivery: Delivery, auto_ack: bool) -> None:
    await microbroker.dispatch(handler, delivery, auto_ack)


async def _by_dispatcher(handler: microbroker.Handler, delivery: Delivery, auto_ack: bool) -> None:
    await microbroker.dispatcher(handler, auto_ack)(delivery)


async def _as_typed_subscriber(
    handler: microbroker.Handler, delivery: Delivery, auto_ack: bool
) -> None:
    """``handler`` as a subscriber taking the raw Delivery, bound as a Server binds it."""
    typed = _TypedHandler(Subscription("t", handler), _InFlight())
    await microbroker.dispatcher(typed, auto_ack)(delivery)


ways = pytest.mark.parametrize("way", [_by_dispatch, _by_dispatcher, _as_typed_subscriber])


class _Recording(Delivery):
    """A delivery that records what it tells the transport."""

    __slots__ = ("told",)

    def __init__(self) -> None:
        super().__init__("t", Message(b"x"))
        self.told: list[str] = []

    async def _settle_ack(self) -> None:
        self.told.append("ack")

    async def _settle_nack(self, delay: float | None) -> None:
        self.told.append("nack")


class _LocalAck(_Recording):
    __slots__ = ()
    acks_locally = True


async def _ok(delivery: Delivery) -> None:
    return None


async def _fails(delivery: Delivery) -> None:
    raise RuntimeError("boom")


async def _nacks(delivery: Delivery) -> None:
    await delivery.nack()


@ways
@pytest.mark.parametrize("kind", [_Recording, _LocalAck])
async def test_a_handler_that_returns_is_acked(kind: type[_Recording], way: Way) -> None:
    delivery = kind()
    await way(_ok, delivery, True)
    assert delivery.acked
    # A transport that acks locally is not awaited; the others are told once.
    assert delivery.told == ([] if kind.acks_locally else ["ack"])


@ways
@pytest.mark.parametrize("kind", [_Recording, _LocalAck])
async def test_without_auto_ack_nothing_is_settled(kind: type[_Recording], way: Way) -> None:
    delivery = kind()
    await way(_ok, delivery, False)
    assert not delivery.settled
    assert delivery.told == []


@ways
@pytest.mark.parametrize("kind", [_Recording, _LocalAck])
async def test_a_handler_error_nacks_even_where_acks_are_local(
    kind: type[_Recording], way: Way
) -> None:
    delivery = kind()
    await way(_fails, delivery, True)
    assert delivery.nacked
    assert delivery.told == ["nack"]


@ways
@pytest.mark.parametrize("kind", [_Recording, _LocalAck])
async def test_the_handlers_own_nack_stands(kind: type[_Recording], way: Way) -> None:
    delivery = kind()
    await way(_nacks, delivery, True)
    assert delivery.nacked
    assert delivery.told == ["nack"]


@ways
async def test_the_handler_error_goes_to_the_error_hooks(way: Way) -> None:
    seen: list[tuple[BaseException, Delivery | None]] = []

    class Hooks:
        @microbroker.hookimpl
        def on_error(self, error: BaseException, delivery: Delivery | None) -> None:
            seen.append((error, delivery))

    hooks = Hooks()
    microbroker.register_plugin(hooks, name="test-dispatch-hooks")
    try:
        delivery = _Recording()
        await way(_fails, delivery, True)
    finally:
        microbroker.unregister_plugin(hooks)
    assert [(str(error), got) for error, got in seen] == [("boom", delivery)]


@pytest.mark.parametrize("auto_ack", [True, False])
async def test_a_mock_handler_is_dispatched_like_any_other(auto_ack: bool) -> None:
    """A mock answers every attribute: it must still be called, and settled by the rules."""
    from unittest.mock import AsyncMock

    handler = AsyncMock(return_value=None)
    delivery = _Recording()
    await microbroker.dispatcher(handler, auto_ack)(delivery)
    handler.assert_awaited_once_with(delivery)
    assert delivery.acked is auto_ack
