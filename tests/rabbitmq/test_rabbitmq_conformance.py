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
