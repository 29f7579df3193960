"""``envelope=True``: go-micro's JSON envelope as the record value, as its kafka plugin writes it.

go-micro's ``broker/kafka`` publishes ``codec.Marshal(&broker.Message{Header,
Body})`` (JSON by default: ``{"Header": {...}, "Body": "<base64>"}``) as the
record value, with no record headers, and reads values the same way.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from google.protobuf import wrappers_pb2
from kafka_helpers import FAST, eventually
from support.kafka_server import KafkaServer

import microbroker
from microbroker import Delivery, Message
from microbroker.conformance import BrokerConformance, BrokerFactory
from microbroker_kafka import KafkaBroker


def topic() -> str:
    return f"envelope.{uuid.uuid4().hex[:8]}"


async def test_a_publish_is_go_micros_envelope_without_record_headers(
    kafka_server: KafkaServer,
) -> None:
    t = topic()
    body = bytes(range(256))
    async with KafkaBroker(kafka_server.address, envelope=True, **FAST) as pub:
        await pub.publish(t, Message(body, {"Micro-Topic": t, "Tenant": "ü"}), partition=0)
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_server.address)
    await consumer.start()
    try:
        tp = TopicPartition(t, 0)
        consumer.assign([tp])
        consumer.seek(tp, 0)
        record = await consumer.getone()
    finally:
        await consumer.stop()
    assert not record.headers, "with the envelope, headers travel in it, not as record headers"
    assert json.loads(record.value) == {
        "Header": {"Micro-Topic": t, "Tenant": "ü"},
        "Body": base64.b64encode(body).decode(),
    }


async def test_go_micro_records_are_read_and_other_values_delivered_as_they_are(
    kafka_server: KafkaServer,
) -> None:
    """Records as go-micro writes them reach a typed subscriber; a plain value arrives whole.

    An envelope's headers are the message's; the record's own headers are not
    looked at (go-micro writes none). A value that is not an envelope (bytes,
    JSON that is not one) is delivered as it is, with no headers.
    """
    t = topic()
    go_micro = json.dumps(
        {
            "Header": {"Content-Type": "application/json", "Micro-Topic": t, "Micro-ID": "1"},
            "Body": base64.b64encode(b'{"n":1}').decode(),
        }
    ).encode()
    values = [go_micro, b"\xffraw bytes", b'{"n": 2}', b'{"Header": {"a": 1}}', b"[]"]
    got: list[Message] = []
    typed: list[tuple[object, str | None]] = []
    sub = KafkaBroker(kafka_server.address, envelope=True, **FAST)
    service = microbroker.Service("envelope-typed", broker=sub)

    # The typed subscriber reads a topic of its own: the other values (JSON objects among
    # them, delivered as they are) would reach it too.
    typed_topic = topic()

    @service.subscriber(typed_topic, queue="typed")
    async def on(value: dict[str, int], ctx: microbroker.Context) -> None:
        typed.append((value, ctx.message_id))

    async def every(delivery: Delivery) -> None:
        got.append(delivery.message)

    producer = AIOKafkaProducer(bootstrap_servers=kafka_server.address)
    async with service:
        await sub.subscribe(t, every)
        await producer.start()
        try:
            for value in values:
                await producer.send_and_wait(t, value, partition=0, headers=[("X-Rec", b"no")])
            await producer.send_and_wait(typed_topic, go_micro, headers=[("X-Rec", b"no")])
        finally:
            await producer.stop()
        await eventually(lambda: len(got) == len(values), 30, "every record")
        await eventually(lambda: len(typed) == 1, 30, "the typed delivery")
    assert got[0].body == b'{"n":1}'
    assert got[0].headers == {"Content-Type": "application/json", "Micro-Topic": t, "Micro-ID": "1"}
    assert [(m.body, m.headers) for m in got[1:]] == [(v, {}) for v in values[1:]]
    assert typed == [({"n": 1}, "1")]


async def test_micro_kafka_envelope_turns_it_on(
    kafka_server: KafkaServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MICRO_KAFKA_ENVELOPE", "true")
    t = topic()
    received: list[Message] = []
    plain: list[bytes] = []

    async def handler(delivery: Delivery) -> None:
        received.append(delivery.message)

    async def raw(delivery: Delivery) -> None:
        plain.append(delivery.body)

    broker = microbroker.get_broker("kafka", address=kafka_server.address, **FAST)
    assert isinstance(broker, KafkaBroker)
    assert broker.settings.envelope
    async with (
        broker,
        KafkaBroker(kafka_server.address, envelope=False, **FAST) as without,
    ):
        await broker.subscribe(t, handler)
        await without.subscribe(t, raw)
        publisher = microbroker.Service("envelope-env", broker=broker)
        await publisher.event(t).publish(wrappers_pb2.StringValue(value="hi"))
        await eventually(lambda: received and plain, 30, "delivery")
    message = received[0]
    assert message.header("Content-Type") == "application/protobuf"
    assert wrappers_pb2.StringValue.FromString(message.body).value == "hi"
    assert json.loads(plain[0])["Header"]["Micro-Topic"] == t  # what a plain reader sees


@pytest.fixture(scope="module")
def envelope_server() -> Iterator[KafkaServer]:
    """A tansu of the envelope suite's own.

    The suite's queue cases use fixed group names (``workers``...), which
    ``test_kafka_conformance.py`` used already on the shared server. On tansu
    0.6.0 a group whose members all left in turn can be joined again by no one:
    the new member is never made leader and never assigned (plain aiokafka
    consumers too), so a second run of those cases on one server hangs.
    """
    with KafkaServer(name="tansu-envelope") as server:
        yield server


class TestKafkaEnvelopeConformance(BrokerConformance):
    """The suite with ``envelope=True`` (the defaults otherwise): headers ride in the value."""

    delivery_timeout = 30.0
    case_timeout = 240.0

    @pytest.fixture
    def broker_factory(self, envelope_server: KafkaServer) -> BrokerFactory:
        return lambda: KafkaBroker(envelope_server.address, envelope=True)
