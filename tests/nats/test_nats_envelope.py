"""The envelope option: go-micro's JSON envelope on the wire, checked with a raw nats-py client.

go-micro's NATS broker publishes ``json.Marshal(&broker.Message{Header, Body})``
as the payload and reads it back on subscribe; with ``envelope=True`` (or
``MICRO_NATS_ENVELOPE=1``) microbroker does the same.
"""

from __future__ import annotations

import base64
import json
import uuid

import nats
import pytest
from google.protobuf import wrappers_pb2
from nats_helpers import Recorder, eventually, synced
from support.nats_server import NatsServer

import microbroker
from microbroker_nats import NatsBroker


def unique(prefix: str) -> str:
    return f"{prefix}.{uuid.uuid4().hex[:10]}"


def go_micro(headers: dict[str, str], body: bytes) -> bytes:
    """What go-micro's NATS broker sends: Go's json.Marshal of a broker.Message."""
    return json.dumps({"Header": headers, "Body": base64.b64encode(body).decode()}).encode()


@pytest.mark.parametrize("jetstream", [False, True], ids=["core", "jetstream"])
async def test_publish_sends_go_micros_envelope(
    nats_server: NatsServer, jetstream_server: NatsServer, jetstream: bool
) -> None:
    server = jetstream_server if jetstream else nats_server
    topic = unique("envelope.out")
    raw = await nats.connect(server.url)
    seen: list[nats.aio.msg.Msg] = []

    async def on_raw(msg: nats.aio.msg.Msg) -> None:
        seen.append(msg)

    await raw.subscribe(topic, cb=on_raw)
    await synced(raw)
    headers = {"Micro-ID": f"id-{topic}", "Content-Type": "application/json", "X-U": "wörld ✓"}
    try:
        async with NatsBroker(server.url, jetstream=jetstream, envelope=True) as broker:
            await broker.publish(topic, microbroker.Message(b"\x00\xff{}", dict(headers)))
            await eventually(lambda: len(seen) == 1, "the raw subscriber's message")
    finally:
        await raw.close()
    assert json.loads(seen[0].data) == {
        "Header": headers,
        "Body": base64.b64encode(b"\x00\xff{}").decode(),
    }
    # Headers travel in the envelope; JetStream's deduplication id is the one NATS header.
    assert seen[0].headers == ({"Nats-Msg-Id": headers["Micro-ID"]} if jetstream else None)


@pytest.mark.parametrize("jetstream", [False, True], ids=["core", "jetstream"])
async def test_subscribers_read_the_envelope_and_take_anything_else_as_it_is(
    nats_server: NatsServer, jetstream_server: NatsServer, jetstream: bool
) -> None:
    server = jetstream_server if jetstream else nats_server
    topic = unique("envelope.in")
    raw = await nats.connect(server.url)
    js = raw.jetstream()
    inbox = Recorder()
    sent = [
        (go_micro({"Micro-Topic": topic, "X-K": "v"}, b"\x01\x02"), None),
        # Go's encoding/json escapes <, > and &; any JSON reader reads them back.
        (b'{"Header":{"X-Html":"\\u003cb\\u003e\\u0026"},"Body":"aGk="}', None),
        (b'{"order": 1}', {"Content-Type": "application/json"}),  # plain JSON, not an envelope
        (b"\xffbinary", {"X-Raw": "yes"}),
        (b'{"Header": {"k": 5}, "Body": ""}', None),  # not one either: kept as it came
    ]
    try:
        async with NatsBroker(server.url, jetstream=jetstream, envelope=True) as broker:
            await broker.subscribe(topic, inbox)
            for payload, headers in sent:
                if jetstream:
                    await js.publish(topic, payload, headers=headers)
                else:
                    await raw.publish(topic, payload, headers=headers)
            await eventually(lambda: len(inbox) == len(sent), "every message")
    finally:
        await raw.close()
    got = [(d.message.body, dict(d.message.headers)) for d in inbox.deliveries]
    assert got[0] == (b"\x01\x02", {"Micro-Topic": topic, "X-K": "v"})
    assert got[1] == (b"hi", {"X-Html": "<b>&"})
    assert got[2] == (b'{"order": 1}', {"Content-Type": "application/json"})
    assert got[3] == (b"\xffbinary", {"X-Raw": "yes"})
    assert got[4] == (b'{"Header": {"k": 5}, "Body": ""}', {})


async def test_typed_events_travel_in_the_envelope_and_the_environment_turns_it_on(
    nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MICRO_NATS_ENVELOPE", "1")
    topic = unique("envelope.event")
    broker = NatsBroker(nats_server.url)
    assert broker.settings.uses_envelope
    raw = await nats.connect(nats_server.url)
    payloads: list[bytes] = []

    async def on_raw(msg: nats.aio.msg.Msg) -> None:
        payloads.append(msg.data)

    await raw.subscribe(topic, cb=on_raw)
    await synced(raw)
    service = microbroker.Service("enveloped", broker=broker)
    got: list[tuple[str, str | None]] = []

    @service.subscriber(topic)
    async def on_value(value: wrappers_pb2.StringValue, ctx: microbroker.Context) -> None:
        got.append((value.value, ctx.metadata.get("tenant")))

    try:
        async with service:
            await service.event(topic).publish(
                wrappers_pb2.StringValue(value="hello"), metadata={"Tenant": "a"}
            )
            await eventually(lambda: got == [("hello", "a")], "the typed delivery")
            await eventually(lambda: len(payloads) == 1, "the raw copy")
    finally:
        await raw.close()
    envelope = json.loads(payloads[0])
    assert envelope["Header"]["Content-Type"] == "application/protobuf"
    assert envelope["Header"]["Micro-Topic"] == topic
    assert envelope["Header"]["Tenant"] == "a"
    assert base64.b64decode(envelope["Body"]) == (
        wrappers_pb2.StringValue(value="hello").SerializeToString()
    )
