"""The conformance suite, in both modes of the nats broker, against a real nats-server."""

from __future__ import annotations

import pytest
from support.nats_server import NatsServer

from microbroker.conformance import BrokerConformance, BrokerFactory, RestartServer
from microbroker_nats import NatsBroker


class TestCoreNats(BrokerConformance):
    """Core NATS: at most once, queue groups, wildcards, reconnect."""

    @pytest.fixture
    def broker_factory(self, nats_server: NatsServer) -> BrokerFactory:
        return lambda: NatsBroker(nats_server.url, max_payload=nats_server.max_payload)

    @pytest.fixture
    def restart_server(self, nats_server: NatsServer) -> RestartServer:
        return nats_server.restart


class TestJetStream(BrokerConformance):
    """JetStream: at least once, acks and redelivery, persistence across restarts."""

    @pytest.fixture
    def broker_factory(self, jetstream_server: NatsServer) -> BrokerFactory:
        return lambda: NatsBroker(
            jetstream_server.url,
            jetstream=True,
            max_payload=jetstream_server.max_payload,
            ack_wait=5.0,
        )

    @pytest.fixture
    def restart_server(self, jetstream_server: NatsServer) -> RestartServer:
        return jetstream_server.restart


class TestCoreNatsPlainClient(BrokerConformance):
    """Core NATS over nats-py's own message path (``fast_path=False``), the fallback."""

    @pytest.fixture
    def broker_factory(self, nats_server: NatsServer) -> BrokerFactory:
        return lambda: NatsBroker(
            nats_server.url, max_payload=nats_server.max_payload, fast_path=False
        )

    @pytest.fixture
    def restart_server(self, nats_server: NatsServer) -> RestartServer:
        return nats_server.restart
