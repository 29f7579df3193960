"""The conformance suite, in every mode of the nats broker, against a real nats-server.

Every broker has its default options and every server nats-server's default
settings (max_payload 1 MiB): what a user gets with a stock server.
"""

from __future__ import annotations

import pytest
from support.nats_server import NatsServer

from microbroker.conformance import BrokerConformance, BrokerFactory, RestartServer
from microbroker_nats import NatsBroker


class TestCoreNats(BrokerConformance):
    """Core NATS: at most once, queue groups, wildcards, reconnect."""

    @pytest.fixture
    def broker_factory(self, nats_server: NatsServer) -> BrokerFactory:
        return lambda: NatsBroker(nats_server.url)

    @pytest.fixture
    def restart_server(self, nats_server: NatsServer) -> RestartServer:
        return nats_server.restart


class TestJetStream(BrokerConformance):
    """JetStream: at least once, acks and redelivery, persistence across restarts."""

    @pytest.fixture
    def broker_factory(self, jetstream_server: NatsServer) -> BrokerFactory:
        return lambda: NatsBroker(jetstream_server.url, jetstream=True)

    @pytest.fixture
    def restart_server(self, jetstream_server: NatsServer) -> RestartServer:
        return jetstream_server.restart


class TestJetStreamAsyncAcks(BrokerConformance):
    """JetStream with ``publish_acks="async"``: publishes return before their acknowledgement."""

    @pytest.fixture
    def broker_factory(self, jetstream_server: NatsServer) -> BrokerFactory:
        return lambda: NatsBroker(jetstream_server.url, jetstream=True, publish_acks="async")

    @pytest.fixture
    def restart_server(self, jetstream_server: NatsServer) -> RestartServer:
        return jetstream_server.restart


class TestCoreNatsPlainClient(BrokerConformance):
    """Core NATS over nats-py's own message path (``fast_path=False``), the fallback."""

    @pytest.fixture
    def broker_factory(self, nats_server: NatsServer) -> BrokerFactory:
        return lambda: NatsBroker(nats_server.url, fast_path=False)

    @pytest.fixture
    def restart_server(self, nats_server: NatsServer) -> RestartServer:
        return nats_server.restart


class TestCoreNatsEnvelope(BrokerConformance):
    """Core NATS with go-micro's JSON envelope (``envelope=True``): its own size limit."""

    @pytest.fixture
    def broker_factory(self, nats_server: NatsServer) -> BrokerFactory:
        return lambda: NatsBroker(nats_server.url, envelope=True)

    @pytest.fixture
    def restart_server(self, nats_server: NatsServer) -> RestartServer:
        return nats_server.restart


class TestJetStreamEnvelope(BrokerConformance):
    """JetStream with go-micro's JSON envelope: the message id the one NATS header."""

    @pytest.fixture
    def broker_factory(self, jetstream_server: NatsServer) -> BrokerFactory:
        return lambda: NatsBroker(jetstream_server.url, jetstream=True, envelope=True)

    @pytest.fixture
    def restart_server(self, jetstream_server: NatsServer) -> RestartServer:
        return jetstream_server.restart
