"""microbroker-rabbitmq beyond the suite: the address, options, TLS, the wire, delays, prefetch.

Everything runs against real RabbitMQ nodes (``support.rabbitmq_server``): the
session's stock node, or one of a test's own where it needs users, a vhost or TLS.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import aiormq
import aiormq.abc
import pytest
from pamqp.commands import Basic
from support.eventually import eventually
from support.rabbitmq_server import RabbitMQServer

import microbroker
from microbroker import Message, MicrobrokerError
from microbroker.transport import InvalidTopic, header_size
from microbroker_rabbitmq import ConnectError, RabbitMQBroker, RabbitMQOptions


def _topic(name: str) -> str:
    return f"{name}.{uuid.uuid4().hex[:8]}"


class Inbox:
    def __init__(self) -> None:
        self.deliveries: list[microbroker.Delivery] = []

    async def __call__(self, delivery: microbroker.Delivery) -> None:
        self.deliveries.append(delivery)

    @property
    def bodies(self) -> list[bytes]:
        return [d.message.body for d in self.deliveries]


async def _raw_queue(
    connection: aiormq.abc.AbstractConnection, exchange: str, key: str
) -> tuple[aiormq.abc.AbstractChannel, list[aiormq.abc.DeliveredMessage]]:
    """A plain AMQP consumer bound to ``exchange`` with ``key``: what another client sees."""
    channel = await connection.channel()
    declared = await channel.queue_declare("", exclusive=True)
    assert declared.queue is not None
    await channel.queue_bind(declared.queue, exchange, routing_key=key)
    got: list[aiormq.abc.DeliveredMessage] = []

    async def on_message(message: aiormq.abc.DeliveredMessage) -> None:
        got.append(message)

    await channel.basic_consume(declared.queue, on_message, no_ack=True)
    return channel, got


# The address and the options -------------------------------------------------------------


async def test_user_password_and_vhost_come_from_the_address(
    new_rabbitmq_server: Callable[..., RabbitMQServer],
) -> None:
    server = new_rabbitmq_server(name="auth", user="app", password="s3cr:t/@x", vhost="shop/eu")
    assert server.url.endswith("/shop%2Feu")
    topic = _topic("auth")
    inbox = Inbox()
    async with RabbitMQBroker(server.url) as broker:
        await broker.subscribe(topic, inbox)
        await broker.publish(topic, Message(b"in the vhost"))
        await eventually(lambda: inbox.bodies == [b"in the vhost"], "delivery in the vhost")

    # The same credentials as options, over an address that has none.
    plain = f"amqp://127.0.0.1:{server.port}"
    async with RabbitMQBroker(plain, user="app", password="s3cr:t/@x", vhost="shop/eu") as other:
        assert other.connected

    with pytest.raises(ConnectError) as refused:
        await RabbitMQBroker(plain, user="app", password="wrong", vhost="shop/eu").connect()
    text = str(refused.value)
    assert f"127.0.0.1:{server.port}" in text
    assert "wrong" not in text, "an error message must not show the password"
    with pytest.raises(ConnectError):
        await RabbitMQBroker(server.url.replace("shop%2Feu", "nowhere")).connect()


async def test_a_dead_address_is_a_public_connect_error() -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    broker = RabbitMQBroker(f"amqp://127.0.0.1:{port}/", connect_timeout=2.0)
    with pytest.raises(ConnectError) as refused:
        await broker.connect()
    assert isinstance(refused.value, MicrobrokerError)
    assert isinstance(refused.value, ConnectionError)
    assert f"127.0.0.1:{port}" in str(refused.value)
    assert not broker.connected


async def test_options_come_from_keywords_then_the_environment(
    rabbitmq_server: RabbitMQServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MICRO_RABBITMQ_EXCHANGE", "events")
    monkeypatch.setenv("MICRO_RABBITMQ_PREFETCH", "7")
    monkeypatch.setenv("MICRO_RABBITMQ_PERSISTENT", "false")
    broker = RabbitMQBroker(rabbitmq_server.url, prefetch=9)
    assert broker.settings.exchange == "events"
    assert broker.settings.prefetch == 9, "a keyword wins over the environment"
    assert broker.settings.persistent is False
    assert not broker.capabilities.persistence, "transient messages do not survive a restart"

    topic = _topic("env")
    async with broker:
        connection = await aiormq.connect(rabbitmq_server.url)
        try:
            _, got = await _raw_queue(connection, "events", topic)
            await broker.publish(topic, Message(b"to events"))
            await eventually(lambda: len(got) == 1, "the publish on the 'events' exchange")
            assert got[0].header.properties.delivery_mode == 1
        finally:
            await connection.close()

    monkeypatch.setenv("MICRO_RABBITMQ_PREFETCH", "lots")
    with pytest.raises(ValueError, match="MICRO_RABBITMQ_PREFETCH"):
        RabbitMQBroker(rabbitmq_server.url)


def test_unknown_and_impossible_options_are_refused_clearly() -> None:
    with pytest.raises(TypeError, match="prefetch"):
        RabbitMQBroker(prefetch_count=5)
    with pytest.raises(ValueError, match="quorum"):
        RabbitMQBroker(queue_type="quorum", durable_queues=False)
    with pytest.raises(ValueError, match="delivery_limit"):
        RabbitMQBroker(delivery_limit=3)
    with pytest.raises(ValueError, match="scheme"):
        RabbitMQBroker("nats://127.0.0.1:4222")
    with pytest.raises(ValueError, match=r"\{queue\}"):
        RabbitMQBroker(queue_name="{topic}")


def test_the_address_is_parsed_as_amqp_uris_are() -> None:
    options = RabbitMQOptions.from_arguments({}, environ={})
    (one,) = options.endpoints("amqps://u%40x:p%3Aw@rabbit.example:5999/my%2Fvhost")
    assert (one.host, one.port, one.tls, one.user, one.password, one.vhost) == (
        "rabbit.example",
        5999,
        True,
        "u@x",
        "p:w",
        "my/vhost",
    )
    a, b = options.endpoints("amqp://10.0.0.1, 10.0.0.2:5673/")
    assert (a.port, a.user, a.password, a.vhost) == (5672, "guest", "guest", "/")
    assert (b.host, b.port) == ("10.0.0.2", 5673)
    assert "p:w" not in str(one)


# TLS ------------------------------------------------------------------------------------


async def test_amqps_with_the_server_ca(new_rabbitmq_server: Callable[..., RabbitMQServer]) -> None:
    server = new_rabbitmq_server(name="tls", tls=True)
    topic = _topic("tls")
    inbox = Inbox()
    async with RabbitMQBroker(server.tls_url, tls_ca_file=str(server.ca_file)) as broker:
        await broker.subscribe(topic, inbox)
        await broker.publish(topic, Message(b"over tls"))
        await eventually(lambda: inbox.bodies == [b"over tls"], "delivery over TLS")
    with pytest.raises(MicrobrokerError, match="cannot connect"):
        # The system's CAs do not know the test CA: the certificate is refused.
        await RabbitMQBroker(server.tls_url).connect()


# The wire: go-micro's shape ---------------------------------------------------------------


async def test_messages_on_the_wire_are_go_micros(rabbitmq_server: RabbitMQServer) -> None:
    """Published to the ``micro`` topic exchange, topic as routing key, headers as the table;
    and a plain AMQP publish there (as go-micro's plugin makes it) reaches a subscriber."""
    topic = _topic("wire")
    connection = await aiormq.connect(rabbitmq_server.url)
    inbox = Inbox()
    try:
        async with RabbitMQBroker(rabbitmq_server.url) as broker:
            _, got = await _raw_queue(connection, "micro", topic)
            headers = {"Micro-ID": "id-1", "Content-Type": "application/json", "X-K": "v"}
            await broker.publish(topic, Message(b"{}", headers))
            await eventually(lambda: len(got) == 1, "the raw consumer's copy")
            raw = got[0]
            assert raw.delivery.exchange == "micro"
            assert raw.delivery.routing_key == topic
            assert raw.header.properties.headers == headers
            assert raw.header.properties.content_type == "application/json"
            assert raw.header.properties.message_id == "id-1"
            assert raw.header.properties.delivery_mode == 2

            await broker.subscribe(topic, inbox, queue="svc")
            channel = await connection.channel()
            await channel.basic_publish(
                b"from go",
                exchange="micro",
                routing_key=topic,
                properties=Basic.Properties(headers={"Micro-Topic": topic, "Count": 3}),
            )
            await eventually(lambda: len(inbox.deliveries) == 1, "the plain AMQP publish")
            delivery = inbox.deliveries[0]
            assert delivery.topic == topic
            assert delivery.message.body == b"from go"
            # A header another client typed as a number arrives as its text.
            assert delivery.message.headers == {"Micro-Topic": topic, "Count": "3"}
    finally:
        await connection.close()


async def test_headers_too_large_for_a_frame_travel_in_the_body(
    new_rabbitmq_server: Callable[..., RabbitMQServer],
) -> None:
    """Headers within max_header_bytes but over the node's frame_max (a setting of
    rabbitmq.conf, 128 KiB by default, which the core's 64 KiB limit stays under) travel
    at the front of the body, and arrive whole; so does a name pamqp would cut short."""
    server = new_rabbitmq_server(name="smallframes", config=("frame_max = 16384",))
    topic = _topic("bigheaders")
    headers = {f"X-H{i}": "v" * 1_000 for i in range(30)}  # 30 kB: over the 16 KiB frame
    headers["X-" + "n" * 300] = "a name longer than an AMQP short string"
    inbox = Inbox()
    connection = await aiormq.connect(server.url)
    try:
        async with RabbitMQBroker(server.url) as broker:
            assert header_size(headers) <= (broker.capabilities.max_header_bytes or 0)
            _, got = await _raw_queue(connection, "micro", topic)
            await broker.subscribe(topic, inbox)
            await broker.publish(topic, Message(b"body", headers))
            await eventually(lambda: len(inbox.deliveries) == 1, "the framed message")
            assert inbox.deliveries[0].message.headers == headers
            assert inbox.deliveries[0].message.body == b"body"
            assert inbox.deliveries[0].body == b"body"
            await eventually(lambda: len(got) == 1, "the raw copy")
            assert got[0].header.properties.headers == {"x-microbroker-framed": "1"}
            # One name over the 128 bytes pamqp keeps whole, in a small message: framed too.
            long_name = {"X-" + "m" * 140: "v", "X-Small": "s"}
            await broker.publish(topic, Message(b"b2", long_name))
            await eventually(lambda: len(inbox.deliveries) == 2, "the long-named header")
            assert inbox.deliveries[1].message.headers == long_name
            assert broker.connected
    finally:
        await connection.close()


async def test_publishing_to_a_wildcard_or_too_long_topic_is_refused(
    rabbitmq_server: RabbitMQServer,
) -> None:
    async with RabbitMQBroker(rabbitmq_server.url) as broker:
        for topic in ("orders.*", "orders.#", "#"):
            with pytest.raises(InvalidTopic):
                await broker.publish(topic, Message(b"x"))
        with pytest.raises(InvalidTopic):
            await broker.publish("t" * 256, Message(b"x"))
        await broker.publish("orders.a*b", Message(b"a star inside a word is a letter"))


# Delivery: attempts, delays, prefetch --------------------------------------------------


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
async def test_a_message_handed_back_by_a_closing_member_counts_an_attempt(
    rabbitmq_server: RabbitMQServer, queue_type: str
) -> None:
    """Classic queues say only ``redelivered``; quorum queues count (``x-delivery-count``)."""
    topic = _topic(f"attempts-{queue_type}")
    options: dict[str, Any] = {"queue_type": queue_type, "queue_name": "{topic}:{queue}:t"}
    held = Inbox()
    first = RabbitMQBroker(rabbitmq_server.url, **options)
    await first.connect()
    await first.subscribe(topic, held, queue="g", auto_ack=False)
    async with RabbitMQBroker(rabbitmq_server.url) as pub:
        await pub.publish(topic, Message(b"m"))
    await eventually(lambda: len(held.deliveries) == 1, "the first delivery")
    assert held.deliveries[0].attempt == 1
    await first.disconnect()  # never acked: the server takes it back

    later = Inbox()
    async with RabbitMQBroker(rabbitmq_server.url, **options) as second:
        await second.subscribe(topic, later, queue="g", auto_ack=False)
        await eventually(lambda: len(later.deliveries) == 1, "the redelivery")
        assert later.deliveries[0].attempt == 2
        await later.deliveries[0].ack()


async def test_a_delayed_redelivery_waits_on_the_server_and_outlives_its_subscriber(
    rabbitmq_server: RabbitMQServer,
) -> None:
    topic = _topic("delay")
    nacked = asyncio.Event()

    loop = asyncio.get_running_loop()
    nacked_at: list[float] = []
    arrived_at: list[float] = []

    async def nack_once(delivery: microbroker.Delivery) -> None:
        nacked_at.append(loop.time())
        await delivery.nack(delay=1.5)
        nacked.set()

    first = RabbitMQBroker(rabbitmq_server.url)
    await first.connect()
    await first.subscribe(topic, nack_once, queue="g")
    async with RabbitMQBroker(rabbitmq_server.url) as pub:
        await pub.publish(topic, Message(b"later", {"X-K": "v"}))
    await asyncio.wait_for(nacked.wait(), 20)
    await first.disconnect()  # the copy waits in the delay queue, not in this process

    inbox = Inbox()

    async def record(delivery: microbroker.Delivery) -> None:
        arrived_at.append(loop.time())
        await inbox(delivery)

    async with RabbitMQBroker(rabbitmq_server.url) as second:
        await second.subscribe(topic, record, queue="g")
        await eventually(lambda: len(inbox.deliveries) == 1, "the delayed redelivery")
        delivery = inbox.deliveries[0]
        assert delivery.attempt == 2
        assert delivery.topic == topic
        assert delivery.message.headers == {"X-K": "v"}, "microbroker's own headers are hidden"
        # A lower bound only (a slow machine makes it later, never earlier): the server held
        # the copy for the delay the nack asked for.
        assert arrived_at[0] - nacked_at[0] >= 1.4, "redelivered before its delay"


async def test_prefetch_leaves_the_rest_on_the_server(rabbitmq_server: RabbitMQServer) -> None:
    topic = _topic("prefetch")
    release = asyncio.Event()
    handled: list[bytes] = []

    async def slow(delivery: microbroker.Delivery) -> None:
        await release.wait()
        handled.append(delivery.message.body)

    connection = await aiormq.connect(rabbitmq_server.url)
    try:
        async with RabbitMQBroker(rabbitmq_server.url, prefetch=4) as broker:
            await broker.subscribe(topic, slow, queue="slow")
            for n in range(40):
                await broker.publish(topic, Message(str(n).encode()))
            channel = await connection.channel()

            async def ready() -> int:
                declared = await channel.queue_declare(f"{topic}:slow", passive=True)
                return int(declared.message_count or 0)

            deadline = asyncio.get_running_loop().time() + 20
            while await ready() != 36:
                assert asyncio.get_running_loop().time() < deadline, await ready()
                await asyncio.sleep(0.05)
            release.set()
            await eventually(lambda: len(handled) == 40, "all 40 handled once released")
            assert handled == [str(n).encode() for n in range(40)]
    finally:
        await connection.close()


async def test_a_queue_declared_otherwise_gives_a_clear_error(
    rabbitmq_server: RabbitMQServer,
) -> None:
    topic = _topic("mismatch")
    async with RabbitMQBroker(rabbitmq_server.url) as classic:
        sub = await classic.subscribe(topic, Inbox(), queue="g")
        await sub.unsubscribe()
    async with RabbitMQBroker(rabbitmq_server.url, queue_type="quorum") as quorum:
        with pytest.raises(MicrobrokerError, match="other settings"):
            await quorum.subscribe(topic, Inbox(), queue="g")
        assert quorum.connected
        await quorum.publish(topic, Message(b"still works"))
