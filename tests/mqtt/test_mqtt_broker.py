"""The MQTT broker's own promises, on real Mosquitto servers: errors, sessions, TLS, options."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import pytest
from support.eventually import eventually
from support.mqtt_server import MosquittoServer
from support.process import free_port

import microbroker
from microbroker_mqtt import MqttAuthError, MqttBroker, MqttConnectError


async def test_a_wrong_address_is_a_clear_error() -> None:
    port = free_port()  # nothing listens there
    broker = MqttBroker(f"mqtt://127.0.0.1:{port}", connect_timeout=5)
    with pytest.raises(MqttConnectError) as caught:
        await broker.connect()
    text = str(caught.value)
    assert f"127.0.0.1:{port}" in text
    assert "cannot reach" in text
    assert "MICRO_BROKER_ADDRESS" in text
    assert not broker.connected
    assert isinstance(caught.value, microbroker.MicrobrokerError)


async def test_refused_credentials_are_a_clear_error_and_right_ones_work(
    new_mosquitto: Callable[..., MosquittoServer],
) -> None:
    server = new_mosquitto(users={"alice": "s3cret"})
    for options in ({"username": "alice", "password": "wrong"}, {}):
        broker = MqttBroker(server.url, **options)
        with pytest.raises(MqttAuthError) as caught:
            await broker.connect()
        assert "refused the credentials" in str(caught.value)
        assert "username and password" in str(caught.value)
        assert not broker.connected
    # The credentials in the address work as well as the options do.
    url = server.url.replace("mqtt://", "mqtt://alice:s3cret@")
    received: list[bytes] = []

    async def handler(delivery: microbroker.Delivery) -> None:
        received.append(delivery.message.body)

    async with (
        MqttBroker(url) as sub,
        MqttBroker(server.url, username="alice", password="s3cret") as pub,
    ):
        await sub.subscribe("secured", handler)
        await pub.publish("secured", microbroker.Message(b"in"))
        await eventually(lambda: received == [b"in"], "delivery with credentials")


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_persistent_session_keeps_qos1_messages_while_the_subscriber_is_away(
    mosquitto: MosquittoServer, protocol: str
) -> None:
    """Clean start off and a stable client id: what is published while the subscriber is
    disconnected arrives, in order, once it is back."""
    client_id = f"billing-{uuid.uuid4().hex[:8]}"
    topic = f"orders/{uuid.uuid4().hex[:8]}"
    received: list[tuple[bytes, dict[str, str]]] = []

    async def handler(delivery: microbroker.Delivery) -> None:
        received.append((delivery.message.body, dict(delivery.message.headers)))

    sub = MqttBroker(mosquitto.url, client_id=client_id, protocol=protocol)
    await sub.connect()
    await sub.subscribe(topic, handler)
    await sub.disconnect()
    async with MqttBroker(mosquitto.url, protocol=protocol) as pub:
        for n in range(50):
            await pub.publish(topic, microbroker.Message(b"%d" % n, {"n": str(n)}), confirm=True)
    assert received == []
    # A new process with the same client id resumes the session.
    back = MqttBroker(mosquitto.url, client_id=client_id, protocol=protocol)
    await back.connect()
    try:
        await back.subscribe(topic, handler)
        await eventually(lambda: len(received) >= 50, "the queued messages")
        assert received == [(b"%d" % n, {"n": str(n)}) for n in range(50)]
    finally:
        await back.disconnect()
        # End the session so that it does not outlive the test on the shared server.
        done = MqttBroker(mosquitto.url, client_id=client_id, protocol=protocol, clean_start=True)
        await done.connect()
        await done.disconnect()


async def test_tls_with_a_self_signed_certificate(
    new_mosquitto: Callable[..., MosquittoServer],
) -> None:
    server = new_mosquitto(tls=True)
    assert server.url.startswith("mqtts://")
    # Without the CA the certificate is not trusted: a clear connection error.
    with pytest.raises(MqttConnectError):
        await MqttBroker(server.url, connect_timeout=5).connect()
    received: list[bytes] = []

    async def handler(delivery: microbroker.Delivery) -> None:
        received.append(delivery.message.body)

    ca = str(server.ca_file)
    async with MqttBroker(server.url, tls_ca_file=ca) as broker:
        await broker.subscribe("over/tls", handler)
        await broker.publish("over/tls", microbroker.Message(b"sealed"))
        await eventually(lambda: received == [b"sealed"], "delivery over TLS")


@pytest.mark.parametrize("qos", [0, 1, 2])
async def test_every_qos_delivers(mosquitto: MosquittoServer, qos: int) -> None:
    received: list[bytes] = []

    async def handler(delivery: microbroker.Delivery) -> None:
        received.append(delivery.message.body)

    topic = f"qos/{qos}/{uuid.uuid4().hex[:8]}"
    async with MqttBroker(mosquitto.url, qos=qos) as broker:
        await broker.subscribe(topic, handler)
        for n in range(20):
            await broker.publish(topic, microbroker.Message(b"%d" % n), confirm=qos > 0)
        await eventually(lambda: len(received) >= 20, f"QoS {qos} deliveries")
    assert sorted(received, key=int) == [b"%d" % n for n in range(20)]


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_subscribers_sharing_a_message_each_get_headers_of_their_own(
    mosquitto: MosquittoServer, protocol: str
) -> None:
    """One server message fanned out to three local subscriptions: a change one
    handler makes to its message is not seen by the others."""
    topic = f"fanout/{uuid.uuid4().hex[:8]}"
    changed = asyncio.Event()
    seen: dict[str, object] = {}

    async def changes(delivery: microbroker.Delivery) -> None:
        delivery.message.headers["Trace"] = "changed"
        delivery.message.headers.pop("Content-Type")
        seen["changer"] = dict(delivery.message.headers)
        changed.set()

    async def reads(delivery: microbroker.Delivery) -> None:
        await changed.wait()
        seen["reader"] = (delivery.content_type, dict(delivery.message.headers), delivery.body)

    service = microbroker.Service("fanout", broker=MqttBroker(mosquitto.url, protocol=protocol))

    @service.subscriber(topic)
    async def typed(message: dict[str, int], ctx: microbroker.Context) -> None:
        await changed.wait()
        seen["typed"] = (message, dict(ctx.metadata))

    await service.broker.connect()
    try:
        await service.broker.subscribe(topic, changes)
        await service.broker.subscribe(topic, reads)
        await service.start()
        await service.client.publish(
            service.client.new_message(topic, {"n": 1}), metadata={"Trace": "sent"}
        )
        await eventually(lambda: len(seen) == 3, "three deliveries")
    finally:
        await service.stop()
        await service.broker.disconnect()
    assert seen["changer"]["Trace"] == "changed"  # type: ignore[index]
    content_type, headers, body = seen["reader"]  # type: ignore[misc]
    assert content_type == "application/json"
    assert headers["Trace"] == "sent"
    assert headers["Content-Type"] == "application/json"
    assert microbroker.codecs.get_codec("application/json").decode(body, dict) == {"n": 1}
    message, metadata = seen["typed"]  # type: ignore[misc]
    assert message == {"n": 1}
    assert metadata["Trace"] == "sent"
    assert metadata["Content-Type"] == "application/json"


async def test_under_311_headers_travel_in_go_micros_envelope(mosquitto: MosquittoServer) -> None:
    """A plain MQTT 3.1.1 subscriber sees go-micro's JSON envelope, as go-micro sends it."""
    import base64
    import json

    raw: list[bytes] = []

    async def handler(delivery: microbroker.Delivery) -> None:
        raw.append(delivery.message.body)

    topic = f"env/{uuid.uuid4().hex[:8]}"
    # envelope=False on the receiving side: it sees the payload as a plain client would.
    async with (
        MqttBroker(mosquitto.url, protocol="3.1.1", envelope=False) as plain,
        MqttBroker(mosquitto.url, protocol="3.1.1") as micro,
    ):
        await plain.subscribe(topic, handler)
        await micro.publish(topic, microbroker.Message(b"\x00\x01", {"Micro-Id": "1"}))
        await eventually(lambda: len(raw) == 1, "the enveloped message")
    envelope = json.loads(raw[0])
    assert envelope == {"Header": {"Micro-Id": "1"}, "Body": base64.b64encode(b"\x00\x01").decode()}


async def test_disconnect_while_the_server_is_down_does_not_hang(
    new_mosquitto: Callable[..., MosquittoServer],
) -> None:
    server = new_mosquitto()
    broker = MqttBroker(server.url, reconnect_delay=0.1, drain_timeout=2)
    await broker.connect()
    await broker.subscribe("down/here", lambda d: asyncio.sleep(0))
    await asyncio.to_thread(server.kill)
    await asyncio.wait_for(broker.disconnect(), 30)
    assert not broker.connected
    with pytest.raises(microbroker.NotConnected):
        await broker.publish("down/here", microbroker.Message(b"x"))


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_headers_and_bodies_of_every_size_survive_the_packet_codec(
    mosquitto: MosquittoServer, protocol: str
) -> None:
    """Short and long (over 127 bytes of properties, multi-byte lengths), non-ASCII, empty."""
    cases = [
        (b"", {}),
        (b"x", {"a": "b"}),
        (b"\x00" * 200, {"Content-Type": "application/protobuf", "Micro-Id": "é✓"}),
        (bytes(range(256)) * 300, {f"k{n}": "v" * 40 for n in range(20)}),
        (b"big" * 100_000, {"n": "1"}),
    ]
    received: list[tuple[bytes, dict[str, str]]] = []

    async def handler(delivery: microbroker.Delivery) -> None:
        received.append((delivery.message.body, dict(delivery.message.headers)))

    topic = f"codec/ü/{uuid.uuid4().hex[:8]}"
    async with MqttBroker(mosquitto.url, protocol=protocol) as broker:
        sub = await broker.subscribe(topic, handler)
        for qos in (0, 1, 2):
            for body, headers in cases:
                await broker.publish(topic, microbroker.Message(body, headers), qos=qos)
        await eventually(lambda: len(received) >= 3 * len(cases), "every case")
        await sub.unsubscribe()  # a non-ASCII filter: gmqtt alone sends a malformed UNSUBSCRIBE
        assert broker.client.is_connected
    assert received == cases * 3
    assert "malformed" not in mosquitto.log(tail=1_000_000).lower()


async def test_many_subscriptions_made_at_once_on_one_connection(
    mosquitto: MosquittoServer,
) -> None:
    """150 subscribes in parallel: more than the server's receive maximum of packet ids.

    They wait their turn for a packet id instead of failing, and then every
    topic delivers, while publishes share the same ids.
    """
    prefix = f"many/{uuid.uuid4().hex[:8]}"
    topics = [f"{prefix}/{n}" for n in range(150)]
    received: list[str] = []

    async def handler(delivery: microbroker.Delivery) -> None:
        received.append(delivery.topic)

    async with MqttBroker(mosquitto.url) as broker:
        subs = await asyncio.gather(*(broker.subscribe(topic, handler) for topic in topics))
        await asyncio.gather(
            *(broker.publish(topic, microbroker.Message(b"x")) for topic in topics * 4)
        )
        await eventually(lambda: len(received) >= 600, "a delivery on every topic")
        await asyncio.gather(*(sub.unsubscribe() for sub in subs))
    assert sorted(received) == sorted(topics * 4)
