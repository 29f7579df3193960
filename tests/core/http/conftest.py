"""Fixtures for the http broker tests: a private registry directory, peer processes, brokers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.http_procs import Peer

import microbroker
from microbroker.brokers.http import HttpBroker
from microbroker.registries.local import LocalRegistry


@pytest.fixture
def registry_dir(tmp_path: Path) -> Path:
    """A local registry of this test's own, so that tests never see each other's nodes."""
    path = tmp_path / "registry"
    path.mkdir(mode=0o700)
    return path


@pytest.fixture
def peer(registry_dir: Path) -> Iterator[Callable[..., Peer]]:
    """Start ``http_peer.py`` processes on the test's registry; all are stopped afterwards."""
    started: list[Peer] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Peer:
        p = Peer(registry_dir, *args, env=env)
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()


@pytest.fixture
async def make_broker(registry_dir: Path) -> AsyncIterator[Callable[..., Any]]:
    """Connected http brokers on the test's registry; disconnected afterwards."""
    brokers: list[microbroker.Broker] = []

    async def make(**options: Any) -> HttpBroker:
        options.setdefault("registry", LocalRegistry(registry_dir))
        broker = microbroker.get_broker("http", **options)
        assert isinstance(broker, HttpBroker)
        await broker.connect()
        brokers.append(broker)
        return broker

    yield make
    for broker in reversed(brokers):
        await broker.disconnect()
