"""The conformance suite against a real Kafka-protocol server (tansu), with the default options.

Every class runs once per client (``client="aiokafka"``, the default, and
``client="confluent"``). No option is tuned for the tests: ``KafkaBroker(address)``
as a user makes it (offset_reset "latest", 1 s heartbeats, 10 s session and rebalance timeouts,
topics of ``DEFAULT_PARTITIONS`` partitions). Only the suite's waits are longer
than its defaults, for Kafka's group rebalances on a small shared machine.
"""

from __future__ import annotations

import pytest
from support.kafka_server import KafkaServer

from microbroker.conformance import BrokerConformance, BrokerFactory, RestartServer
from microbroker_kafka import DEFAULT_PARTITIONS, KafkaBroker


class _KafkaWaits(BrokerConformance):
    # A member joining a group makes the others rejoin (they hear of it at their next
    # heartbeat, 1 s apart); the suite's queue cases join four members in turn.
    delivery_timeout = 30.0
    case_timeout = 240.0


class TestKafkaDefaults(_KafkaWaits):
    """The defaults: topics of DEFAULT_PARTITIONS partitions, so a queue group spreads them.

    The server stores in memory, so no restart fixture here: ``persistence``
    (declared by default, as Kafka keeps its log) is held to in
    ``TestKafkaDurableRestart``, against a server that keeps it.
    """

    @pytest.fixture
    def broker_factory(self, kafka_server: KafkaServer, kafka_client: str) -> BrokerFactory:
        assert DEFAULT_PARTITIONS > 1
        return lambda: KafkaBroker(kafka_server.address, client=kafka_client)


class TestKafkaOnePartition(_KafkaWaits):
    """``partitions=1``, the one option that changes what is promised: publish order kept."""

    @pytest.fixture
    def broker_factory(self, kafka_server: KafkaServer, kafka_client: str) -> BrokerFactory:
        return lambda: KafkaBroker(kafka_server.address, partitions=1, client=kafka_client)


#: The cases TestKafkaDurableRestart runs; the rest of the suite runs in the classes above.
_DURABLE_CASES = frozenset(
    {"test_reconnect_after_server_restart", "test_messages_persist_across_server_restart"}
)


class TestKafkaDurableRestart(_KafkaWaits):
    """The restart cases, with the defaults, against a tansu that stores in S3, SIGKILLed.

    Each case starts its own object store (SeaweedFS), so only these cases run here.
    """

    @pytest.fixture
    def broker_factory(self, durable_kafka_server: KafkaServer, kafka_client: str) -> BrokerFactory:
        return lambda: KafkaBroker(durable_kafka_server.address, client=kafka_client)

    @pytest.fixture
    def restart_server(self, durable_kafka_server: KafkaServer) -> RestartServer:
        return lambda: durable_kafka_server.restart(hard=True)


for _name in dir(BrokerConformance):
    if _name.startswith("test_") and _name not in _DURABLE_CASES:
        setattr(TestKafkaDurableRestart, _name, None)
