"""Fixtures for microbroker-redis: real redis-server processes on free loopback ports.

One stock server serves the session (the suite's restart cases restart it);
tests that kill, freeze, or need users, TLS or durability start their own
(``new_redis_server``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from support.redis_server import RedisServer


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A stock server shared by the session (restarted by the suite's restart cases)."""
    server = RedisServer(name="session")
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def new_redis_server() -> Iterator[Callable[..., RedisServer]]:
    """Start a server of one's own (to kill, freeze, or with users and TLS); stopped after."""
    servers: list[RedisServer] = []

    def start(**options: object) -> RedisServer:
        server = RedisServer(**options)  # type: ignore[arg-type]
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.close()
