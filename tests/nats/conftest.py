"""Fixtures for microbroker-nats: real nats-server processes on free loopback ports."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator

import nats
import pytest
from nats.js import JetStreamContext
from support.nats_server import NatsServer


@pytest.fixture(scope="session")
def nats_server() -> Iterator[NatsServer]:
    """A core NATS server shared by the session (tests that kill it use ``new_nats_server``)."""
    with NatsServer(name="nats-core") as server:
        yield server


@pytest.fixture(scope="session")
def jetstream_server() -> Iterator[NatsServer]:
    """A JetStream-enabled server shared by the session, storing in its own directory."""
    with NatsServer(jetstream=True, name="nats-jetstream") as server:
        yield server


@pytest.fixture
def new_nats_server() -> Iterator[Callable[..., NatsServer]]:
    """Start a server of one's own (to kill, restart or lock with credentials); stopped after."""
    servers: list[NatsServer] = []

    def start(**options: object) -> NatsServer:
        server = NatsServer(**options)  # type: ignore[arg-type]
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.close()


@pytest.fixture
async def jsm(jetstream_server: NatsServer) -> AsyncIterator[JetStreamContext]:
    """A raw nats-py JetStream context, to look at (and change) the server's streams."""
    nc = await nats.connect(jetstream_server.url)
    try:
        yield nc.jetstream()
    finally:
        await nc.close()
