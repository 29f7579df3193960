"""``microbroker.dispatch``: the settlement rules every broker applies to each delivery."""

from __future__ import annotations

import pytest

import microbroker
from microbroker import Delivery, Message


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


@pytest.mark.parametrize("kind", [_Recording, _LocalAck])
async def test_a_handler_that_returns_is_acked(kind: type[_Recording]) -> None:
    delivery = kind()
    await microbroker.dispatch(_ok, delivery, True)
    assert delivery.acked
    # A transport that acks locally is not awaited; the others are told once.
    assert delivery.told == ([] if kind.acks_locally else ["ack"])


@pytest.mark.parametrize("kind", [_Recording, _LocalAck])
async def test_without_auto_ack_nothing_is_settled(kind: type[_Recording]) -> None:
    delivery = kind()
    await microbroker.dispatch(_ok, delivery, False)
    assert not delivery.settled
    assert delivery.told == []


@pytest.mark.parametrize("kind", [_Recording, _LocalAck])
async def test_a_handler_error_nacks_even_where_acks_are_local(kind: type[_Recording]) -> None:
    delivery = kind()
    await microbroker.dispatch(_fails, delivery, True)
    assert delivery.nacked
    assert delivery.told == ["nack"]


@pytest.mark.parametrize("kind", [_Recording, _LocalAck])
async def test_the_handlers_own_nack_stands(kind: type[_Recording]) -> None:
    delivery = kind()
    await microbroker.dispatch(_nacks, delivery, True)
    assert delivery.nacked
    assert delivery.told == ["nack"]
