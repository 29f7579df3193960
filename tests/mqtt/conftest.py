"""Fixtures for microbroker-mqtt: real Mosquitto processes on free loopback ports."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from support.mqtt_server import MosquittoServer


@pytest.fixture(scope="session")
def mosquitto() -> Iterator[MosquittoServer]:
    """A Mosquitto shared by the session (tests that stop or restart one use ``new_mosquitto``)."""
    with MosquittoServer(name="mosquitto-shared") as server:
        yield server


@pytest.fixture
def new_mosquitto() -> Iterator[Callable[..., MosquittoServer]]:
    """Start a server of one's own (to restart, or to lock with credentials); stopped after."""
    servers: list[MosquittoServer] = []

    def start(**options: object) -> MosquittoServer:
        server = MosquittoServer(**options)  # type: ignore[arg-type]
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.close()
