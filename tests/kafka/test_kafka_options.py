"""Options from ``MICRO_KAFKA_*``, the partitions of the topics the broker makes, a starved group.

"Switch by environment variable" (issue 21): ``MICRO_KAFKA_PARTITIONS=4`` was
silently ignored, topics were made with one partition, and of a group of two
one member got all 20 messages and the other none, without a word.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from kafka_helpers import FAST, eventually
from support.kafka_server import KafkaServer

import microbroker
from microbroker import Delivery, Message
from microbroker_kafka import DEFAULT_PARTITIONS, KafkaBroker, KafkaDelivery, KafkaOptions
from microbroker_kafka.options import OPTION_NAMES

#: For every option: a value for its variable, and what the option then is. Each
#: differs from the option's default, so that reading the variable shows.
FROM_ENV: dict[str, tuple[str, Any]] = {
    "client": ("Confluent", "confluent"),
    "client_id": ("svc-7", "svc-7"),
    "linger": ("0.02", 0.02),
    "batch_size": ("32768", 32768),
    "max_message_size": ("2097152", 2097152),
    "acks": ("1", 1),
    "confirm": ("false", False),
    "compression": ("gzip", "gzip"),
    "envelope": ("1", True),
    "auto_create_topics": ("no", False),
    "partitions": ("8", 8),
    "replication_factor": ("3", 3),
    "offset_reset": ("earliest", "earliest"),
    "session_timeout": ("20", 20.0),
    "heartbeat_interval": ("2.5", 2.5),
    "max_poll_records": ("100", 100),
    "commit_interval": ("1", 1.0),
    "fetch_wait": ("0.5", 0.5),
    "rebalance_timeout": ("30", 30.0),
    "join_timeout": ("5", 5.0),
    "metadata_refresh": ("60", 60.0),
    "drain_timeout": ("3", 3.0),
    "request_timeout": ("12", 12.0),
    "tls_ca_file": ("/etc/kafka/ca.pem", "/etc/kafka/ca.pem"),
    "tls_cert_file": ("/etc/kafka/client.pem", "/etc/kafka/client.pem"),
    "tls_key_file": ("/etc/kafka/client.key", "/etc/kafka/client.key"),
    "sasl_mechanism": ("SCRAM-SHA-512", "SCRAM-SHA-512"),
    "sasl_username": ("alice", "alice"),
    "sasl_password": ("s3cret", "s3cret"),
    "persistence": ("off", False),
}


def env(**values: str) -> dict[str, str]:
    return {f"MICRO_KAFKA_{name.upper()}": value for name, value in values.items()}


def test_every_option_is_read_from_its_variable() -> None:
    # tls is a context, not text: MICRO_KAFKA_TLS has a test of its own below.
    assert set(FROM_ENV) == set(OPTION_NAMES) - {"tls"}, "an option without a variable test"
    options = KafkaOptions.from_arguments({}, env(**{k: v for k, (v, _) in FROM_ENV.items()}))
    for name, (_, expected) in FROM_ENV.items():
        assert getattr(options, name) == expected, name
        assert getattr(options, name) != getattr(KafkaOptions(), name), name


def test_an_unknown_client_and_a_tls_context_for_librdkafka_fail_clearly() -> None:
    with pytest.raises(ValueError, match=r"MICRO_KAFKA_CLIENT='kafka-python' is not one of"):
        KafkaOptions.from_arguments({}, env(client="kafka-python"))
    with pytest.raises(ValueError, match="cannot be handed to librdkafka"):
        KafkaBroker("127.0.0.1:9092", client="confluent", tls=ssl.create_default_context())


async def test_micro_kafka_client_puts_a_service_on_librdkafka(
    kafka_server: KafkaServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A service configured only by its environment runs on confluent-kafka, end to end."""
    monkeypatch.setenv("MICRO_KAFKA_CLIENT", "confluent")
    t, group = f"env.{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    got: list[bytes] = []
    async with KafkaBroker(kafka_server.address, **FAST) as broker:
        assert broker.settings.client == "confluent"
        await broker.subscribe(t, lambda d: _append(got, d), queue=group)
        # librdkafka's producer reports deliveries in a thread the adapter starts.
        assert any(th.name == "rdkafka-producer" for th in threading.enumerate())
        for n in range(5):
            await broker.publish(t, Message(str(n).encode()))
        await eventually(lambda: len(got) >= 5, 30, "delivery over librdkafka")
    assert got == [str(n).encode() for n in range(5)]


async def _append(into: list[bytes], delivery: Delivery) -> None:
    into.append(delivery.message.body)


def test_micro_kafka_tls_turns_tls_on_with_the_systems_cas() -> None:
    assert isinstance(KafkaOptions.from_arguments({}, env(tls="1")).tls, ssl.SSLContext)
    assert KafkaOptions.from_arguments({}, env(tls="0")).tls is None
    assert KafkaOptions.from_arguments({}, env(tls="true")).security_protocol == "SSL"


def test_a_keyword_argument_wins_over_its_variable() -> None:
    environ = env(partitions="8", compression="lz4", offset_reset="earliest")
    options = KafkaOptions.from_arguments({"partitions": 2, "compression": None}, environ)
    assert options.partitions == 2
    assert options.compression is None  # an explicit None wins too
    assert options.offset_reset == "earliest"  # not given: the variable's


@pytest.mark.parametrize(
    ("variable", "value", "why"),
    [
        ("PARTITIONS", "four", r"MICRO_KAFKA_PARTITIONS='four' is not an integer"),
        ("PARTITIONS", "0", r"partitions must be positive.*set by MICRO_KAFKA_PARTITIONS"),
        ("LINGER", "soon", r"MICRO_KAFKA_LINGER='soon' is not a number"),
        ("LINGER", "nan", r"MICRO_KAFKA_LINGER='nan' is not a finite number"),
        ("ENVELOPE", "maybe", r"MICRO_KAFKA_ENVELOPE='maybe' is not a boolean"),
        ("ACKS", "2", r"MICRO_KAFKA_ACKS='2' is not one of 0, 1, all"),
        ("OFFSET_RESET", "newest", r"MICRO_KAFKA_OFFSET_RESET='newest' is not one of"),
        ("COMPRESSION", "brotli", r"MICRO_KAFKA_COMPRESSION='brotli' is not one of gzip"),
        ("HEARTBEAT_INTERVAL", "30", r"below session_timeout.*MICRO_KAFKA_HEARTBEAT_INTERVAL"),
        ("SASL_USERNAME", "alice", r"needs sasl_mechanism.*set by MICRO_KAFKA_SASL_USERNAME"),
    ],
)
def test_a_bad_value_is_an_error_naming_its_variable(variable: str, value: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        KafkaOptions.from_arguments({}, {f"MICRO_KAFKA_{variable}": value})


def test_a_tls_file_that_cannot_be_read_fails_when_the_broker_is_made(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-ca.pem"
    monkeypatch.setenv("MICRO_KAFKA_TLS_CA_FILE", str(missing))
    with pytest.raises(ValueError, match=f"cannot load kafka option tls_ca_file '{missing}'"):
        KafkaBroker("127.0.0.1:9092")


async def topic_partitions(address: str, topic: str) -> int:
    """How many partitions ``topic`` has, as plain aiokafka reads it."""
    consumer = AIOKafkaConsumer(bootstrap_servers=address)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        return len(consumer.partitions_for_topic(topic) or ())
    finally:
        await consumer.stop()


async def test_topics_are_made_with_the_default_partitions(kafka_server: KafkaServer) -> None:
    topic = f"options.{uuid.uuid4().hex[:8]}"
    async with KafkaBroker(kafka_server.address) as broker:
        await broker.publish(topic, Message(b"x"))
    assert await topic_partitions(kafka_server.address, topic) == DEFAULT_PARTITIONS == 4


async def test_a_service_configured_by_environment_splits_a_group_over_partitions(
    kafka_server: KafkaServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The issue's case, with MICRO_KAFKA_PARTITIONS=4: both members get part of the 20."""
    monkeypatch.setenv("MICRO_BROKER", "kafka")
    monkeypatch.setenv("MICRO_BROKER_ADDRESS", kafka_server.address)
    monkeypatch.setenv("MICRO_KAFKA_PARTITIONS", "3")  # not the default: the variable shows
    monkeypatch.setenv("MICRO_KAFKA_HEARTBEAT_INTERVAL", "0.2")
    topic, group = f"options.{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    got: dict[str, list[int]] = {"a": [], "b": []}
    brokers = [microbroker.get_broker() for _ in range(3)]
    pub, a, b = brokers
    assert all(isinstance(broker, KafkaBroker) for broker in brokers)
    for broker in brokers:
        await broker.connect()
    try:

        def member(name: str) -> Any:
            async def handler(delivery: Delivery) -> None:
                assert isinstance(delivery, KafkaDelivery)
                got[name].append(delivery.partition)

            return handler

        await a.subscribe(topic, member("a"), queue=group)
        await b.subscribe(topic, member("b"), queue=group)
        assert await topic_partitions(kafka_server.address, topic) == 3
        for n in range(20):
            await pub.publish(topic, Message(b"%d" % n), key=b"key-%d" % n)
        await eventually(lambda: len(got["a"]) + len(got["b"]) >= 20, 30, "delivery of 20")
    finally:
        for broker in brokers:
            await broker.disconnect()
    assert got["a"], f"member a got none of the messages: {got}"
    assert got["b"], f"member b got none of the messages: {got}"
    assert not set(got["a"]) & set(got["b"]), "a partition read by both members"


def starved(records: list[logging.LogRecord]) -> list[str]:
    return [
        r.getMessage()
        for r in records
        if r.name == "microbroker.broker.kafka" and "get no messages" in r.getMessage()
    ]


async def test_a_group_with_more_members_than_partitions_is_warned_once_per_rebalance(
    kafka_server: KafkaServer, caplog: pytest.LogCaptureFixture
) -> None:
    topic, group = f"options.{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    options = {**FAST, "partitions": 2}
    brokers = [KafkaBroker(kafka_server.address, **options) for _ in range(4)]
    for broker in brokers:
        await broker.connect()
    caplog.set_level(logging.WARNING, logger="microbroker.broker.kafka")
    try:

        async def handler(delivery: Delivery) -> None:
            pass

        for broker in brokers[:2]:
            await broker.subscribe(topic, handler, queue=group)
        assert starved(caplog.records) == [], "two members on two partitions: no warning"
        await brokers[2].subscribe(topic, handler, queue=group)
        await eventually(lambda: len(starved(caplog.records)) >= 1, 30, "the warning")
        first = starved(caplog.records)
        # Several heartbeats and fetches with the group unchanged: no warning more.
        await asyncio.sleep(1.5)
        assert starved(caplog.records) == first, "warned again without a rebalance"
        await brokers[3].subscribe(topic, handler, queue=group)
        await eventually(lambda: len(starved(caplog.records)) > len(first), 30, "the next one")
    finally:
        for broker in brokers:
            await broker.disconnect()
    warnings = starved(caplog.records)
    assert all(f"queue group {group!r}" in w and f"topic {topic!r}" in w for w in warnings)
    assert "has 3 members" in first[0]
    assert "which has 2 partition(s)" in first[0]
    assert "1 member(s) get no messages" in first[0]
    assert any("has 4 members" in w and "2 member(s) get no messages" in w for w in warnings)
    print("\n" + "\n".join(warnings))
