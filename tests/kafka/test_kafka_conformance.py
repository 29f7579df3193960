"""The conformance suite against a real Kafka-protocol server (tansu), in two topic layouts."""

from __future__ import annotations

import pytest
from kafka_helpers import FAST
from support.kafka_server import KafkaServer

from microbroker.conformance import BrokerConformance, BrokerFactory, RestartServer
from microbroker_kafka import KafkaBroker


class TestKafkaOnePartition(BrokerConformance):
    """One partition per topic: publish order kept; a group has one active member."""

    @pytest.fixture
    def broker_factory(self, kafka_server: KafkaServer) -> BrokerFactory:
        return lambda: KafkaBroker(kafka_server.address, partitions=1, **FAST)

    @pytest.fixture
    def restart_server(self, kafka_server: KafkaServer) -> RestartServer:
        # In-memory storage: the restarted server is empty (persistence=False in FAST).
        return lambda: kafka_server.restart(hard=True)


class TestKafkaPartitioned(BrokerConformance):
    """Four partitions per topic: a queue group spreads them over its members."""

    @pytest.fixture
    def broker_factory(self, kafka_server: KafkaServer) -> BrokerFactory:
        return lambda: KafkaBroker(kafka_server.address, partitions=4, **FAST)

    @pytest.fixture
    def restart_server(self, kafka_server: KafkaServer) -> RestartServer:
        return lambda: kafka_server.restart(hard=True)


#: The cases TestKafkaDurableRestart runs; the rest of the suite runs in the classes above.
_DURABLE_CASES = frozenset(
    {"test_reconnect_after_server_restart", "test_messages_persist_across_server_restart"}
)


class TestKafkaDurableRestart(BrokerConformance):
    """The restart cases against a tansu that stores in S3 and is killed with SIGKILL.

    ``persistence`` holds here, so the persistence case runs too. Each case starts
    its own object store (SeaweedFS), so only these cases run in this class.
    """

    @pytest.fixture
    def broker_factory(self, durable_kafka_server: KafkaServer) -> BrokerFactory:
        options = {**FAST, "persistence": True}
        return lambda: KafkaBroker(durable_kafka_server.address, partitions=4, **options)

    @pytest.fixture
    def restart_server(self, durable_kafka_server: KafkaServer) -> RestartServer:
        return lambda: durable_kafka_server.restart(hard=True)


for _name in dir(BrokerConformance):
    if _name.startswith("test_") and _name not in _DURABLE_CASES:
        setattr(TestKafkaDurableRestart, _name, None)
