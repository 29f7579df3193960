"""Fixtures for microbroker-rabbitmq: real RabbitMQ nodes of their own on free loopback ports.

RabbitMQ takes seconds to boot, so one node serves the session; tests that kill,
freeze or lock a server start their own (``new_rabbitmq_server``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from support.rabbitmq_server import RabbitMQServer


@pytest.fixture(scope="session")
def rabbitmq_server() -> Iterator[RabbitMQServer]:
    """A stock node shared by the session (restarted by the suite's restart cases)."""
    with RabbitMQServer(name="session") as server:
        yield server


@pytest.fixture
def new_rabbitmq_server() -> Iterator[Callable[..., RabbitMQServer]]:
    """Start a node of one's own (to kill, freeze, or with users and TLS); stopped after."""
    servers: list[RabbitMQServer] = []

    def start(**options: object) -> RabbitMQServer:
        server = RabbitMQServer(**options)  # type: ignore[arg-type]
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.close()
