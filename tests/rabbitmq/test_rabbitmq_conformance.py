"""The conformance suite against a real RabbitMQ, with the broker's default options."""

from __future__ import annotations

import pytest
from support.rabbitmq_server import RabbitMQServer

from microbroker.conformance import BrokerConformance, BrokerFactory, RestartServer
from microbroker_rabbitmq import RabbitMQBroker


class TestRabbitMQ(BrokerConformance):
    """Defaults: durable queue groups, persistent messages, confirms, delay queues."""

    @pytest.fixture
    def broker_factory(self, rabbitmq_server: RabbitMQServer) -> BrokerFactory:
        return lambda: RabbitMQBroker(rabbitmq_server.url)

    @pytest.fixture
    def restart_server(self, rabbitmq_server: RabbitMQServer) -> RestartServer:
        return rabbitmq_server.restart


class TestRabbitMQQuorum(BrokerConformance):
    """Queue groups on quorum queues: the attempt from the server's ``x-delivery-count``."""

    @pytest.fixture
    def broker_factory(self, rabbitmq_server: RabbitMQServer) -> BrokerFactory:
        return lambda: RabbitMQBroker(
            rabbitmq_server.url, queue_type="quorum", queue_name="{topic}:{queue}:quorum"
        )

    @pytest.fixture
    def restart_server(self, rabbitmq_server: RabbitMQServer) -> RestartServer:
        return rabbitmq_server.restart
