"""Fixtures of the core tests: isolated memory buses and plugins registered for one test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator

import pytest
from _helpers import new_address

import microbroker


@pytest.fixture
def address() -> str:
    """A memory bus address no other test uses."""
    return new_address()


@pytest.fixture
async def broker(address: str) -> AsyncIterator[microbroker.Broker]:
    """A connected memory broker on a bus of its own, made through the registry."""
    async with microbroker.get_broker("memory", address=address) as connected:
        yield connected


@pytest.fixture
def plugin() -> Iterator[Callable[..., str]]:
    """Register plugins for one test: ``plugin(obj, name=None)``; all are removed afterwards."""
    registered: list[str] = []

    def register(obj: object, name: str | None = None) -> str:
        registered.append(microbroker.register_plugin(obj, name))
        return registered[-1]

    yield register
    for name in reversed(registered):
        microbroker.unregister_plugin(name)
