"""The conformance suite against a real Kafka-protocol server (tansu), in two topic layouts."""

from __future__ import annotations

import pytest
from kafka_helpers import FAST
from support.kafka_server import KafkaServer

from microbroker.conformance import BrokerConformance, BrokerFactory
from microbroker_kafka import KafkaBroker


class TestKafkaOnePartition(BrokerConformance):
    """One partition per topic: publish order kept; a group has one active member."""

    @pytest.fixture
    def broker_factory(self, kafka_server: KafkaServer) -> BrokerFactory:
        return lambda: KafkaBroker(kafka_server.address, partitions=1, **FAST)


class TestKafkaPartitioned(BrokerConformance):
    """Four partitions per topic: a queue group spreads them over its members."""

    @pytest.fixture
    def broker_factory(self, kafka_server: KafkaServer) -> BrokerFactory:
        return lambda: KafkaBroker(kafka_server.address, partitions=4, **FAST)
