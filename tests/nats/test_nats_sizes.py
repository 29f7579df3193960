"""max_message_size on NATS: derived from the server's max_payload, honest to the byte.

The server's limit is on the header block and the payload together; the declared
size counts only the body and the header names and values (as ``Broker.publish``
does), so the broker takes off the framing a message may need. These tests send
the worst case the declaration covers (64 headers with one-letter names, a
64-character message id) at exactly the declared size, and one byte more.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from nats_helpers import Recorder, eventually
from support.nats_server import NatsServer

import microbroker
from microbroker.transport import header_size
from microbroker_nats import NatsBroker
from microbroker_nats._publishing import RESERVED_HEADERS, RESERVED_MSG_ID

MODES = {
    "core": {},
    "jetstream": {"jetstream": True},
    "envelope": {"envelope": True},
    "jetstream-envelope": {"jetstream": True, "envelope": True},
}


@pytest.fixture(params=list(MODES))
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def server(mode: str, nats_server: NatsServer, jetstream_server: NatsServer) -> NatsServer:
    return jetstream_server if MODES[mode].get("jetstream") else nats_server


def crowded(topic: str, size: int) -> microbroker.Message:
    """A message of exactly ``size`` bytes with the most framing the declaration covers."""
    headers = {f"{chr(65 + n // 26)}{chr(65 + n % 26)}": "" for n in range(RESERVED_HEADERS - 1)}
    headers["Micro-ID"] = "i" * (RESERVED_MSG_ID - len(topic)) + topic
    body = b"\xff" * (size - header_size(headers))
    return microbroker.Message(body, headers)


async def test_every_message_up_to_the_declared_size_fits_and_one_byte_more_is_refused(
    server: NatsServer, mode: str
) -> None:
    """A stock nats-server (max_payload 1 MiB), the broker with its default options."""
    assert server.max_payload is None, "a server with nats-server's default max_payload"
    topic = f"sizes.{mode}"
    async with NatsBroker(server.url, **MODES[mode]) as broker:
        limit = broker.capabilities.max_message_size
        assert limit is not None
        assert limit == NatsBroker(server.url, **MODES[mode]).capabilities.max_message_size, (
            "before connecting the broker assumes nats-server's default, which this server has"
        )
        inbox = Recorder()
        await broker.subscribe(topic, inbox)
        exact = crowded(topic, limit)
        assert len(exact.body) + header_size(exact.headers) == limit
        await broker.publish(topic, exact)
        plain = microbroker.Message(b"\x01" * limit)
        await broker.publish(topic, plain)
        for message in (crowded(topic, limit + 1), microbroker.Message(b"\x01" * (limit + 1))):
            with pytest.raises(microbroker.MessageTooLarge):
                await broker.publish(topic, message)
        await eventually(lambda: len(inbox) == 2, "both messages of the declared size")
        assert inbox.deliveries[0].message.body == exact.body
        received = dict(inbox.deliveries[0].message.headers)
        if MODES[mode] == {"jetstream": True}:
            # JetStream keeps the id it deduplicated by among the NATS headers.
            assert received.pop("Nats-Msg-Id") == exact.headers["Micro-ID"]
        assert received == exact.headers
        assert inbox.deliveries[1].message.body == plain.body
        assert broker.connected


async def test_more_framing_than_reserved_is_measured_and_refused_before_sending(
    server: NatsServer, mode: str
) -> None:
    """Within the declared size but 200 headers: MessageTooLarge, and the connection stays up.

    (Without this check the server would take the oversized HPUB as a protocol
    violation and close the connection.)
    """
    topic = f"framing.{mode}"
    async with NatsBroker(server.url, **MODES[mode]) as broker:
        limit = broker.capabilities.max_message_size
        assert limit is not None
        # More than the framing reserve covers, within max_headers (256).
        headers = {f"X{n}": "" for n in range(200)}
        assert RESERVED_HEADERS < len(headers) <= (broker.capabilities.max_headers or 0)
        message = microbroker.Message(b"\0" * (limit - header_size(headers)), headers)
        with pytest.raises(microbroker.MessageTooLarge, match="max_payload of 1048576 bytes"):
            await broker.publish(topic, message)
        inbox = Recorder()
        await broker.subscribe(topic, inbox)
        await broker.publish(topic, microbroker.Message(b"after", headers))
        await eventually(lambda: inbox.bodies == [b"after"], "the next message")
        assert broker.connected


async def test_max_message_size_comes_from_the_server(
    new_nats_server: Callable[..., NatsServer],
) -> None:
    server = new_nats_server(max_payload=3 * 1024 * 1024)
    broker = NatsBroker(server.url)
    assumed = broker.capabilities.max_message_size
    assert assumed is not None
    assert 1024 * 1024 - 512 < assumed < 1024 * 1024
    async with broker:
        limit = broker.capabilities.max_message_size
        assert limit == assumed + 2 * 1024 * 1024
        inbox = Recorder()
        await broker.subscribe("big", inbox)
        await broker.publish("big", microbroker.Message(b"\1" * (2 * 1024 * 1024)))
        with pytest.raises(microbroker.MessageTooLarge, match="max_message_size"):
            await broker.publish("big", microbroker.Message(b"\0" * (3 * 1024 * 1024 + 1)))
        await eventually(lambda: len(inbox) == 1, "the 2 MiB message")
        assert broker.connected


async def test_a_micro_id_too_long_for_jetstreams_header_block_is_refused_before_sending(
    jetstream_server: NatsServer,
) -> None:
    """JetStream stores a header block of at most 64 KiB and the Micro-ID travels twice
    (as itself and as Nats-Msg-Id): headers within max_header_bytes whose block would
    exceed it are MessageTooLarge (max_header_bytes), not a server error, and the
    broker goes on."""
    async with NatsBroker(jetstream_server.url, jetstream=True) as broker:
        limit = broker.capabilities.max_header_bytes
        assert limit is not None
        assert limit < 0xFFFF
        micro_id = "i" * (limit - len("Micro-ID"))
        message = microbroker.Message(b"x", {"Micro-ID": micro_id})
        with pytest.raises(microbroker.MessageTooLarge, match="Nats-Msg-Id") as caught:
            await broker.publish("longid", message)
        assert caught.value.limit_name == "max_header_bytes"
        inbox = Recorder()
        await broker.subscribe("longid", inbox)
        await broker.publish("longid", microbroker.Message(b"after", {"Micro-ID": "short"}))
        await eventually(lambda: inbox.bodies == [b"after"], "the next message")
        assert broker.connected
