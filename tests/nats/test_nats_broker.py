"""The nats broker in core NATS mode: selection, addresses, auth, headers, queue groups, limits."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import nats
import pytest
from nats_helpers import Recorder, eventually, synced
from support.nats_server import NatsServer
from support.process import free_port

import microbroker
from microbroker_nats import NatsAuthError, NatsBroker, NatsConnectError


async def test_selected_by_name_through_the_entry_point(nats_server: NatsServer) -> None:
    info = microbroker.available_brokers()["nats"]
    assert info.distribution == "microbroker-nats"
    broker = microbroker.get_broker("nats", address=nats_server.url)
    assert isinstance(broker, NatsBroker)
    assert str(broker) == "nats"
    async with broker:
        assert broker.connected


async def test_address_from_the_environment_is_a_server_list(
    nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dead server in MICRO_BROKER_ADDRESS is skipped; the live one serves."""
    dead = f"127.0.0.1:{free_port()}"
    monkeypatch.setenv("MICRO_BROKER", "nats")
    monkeypatch.setenv("MICRO_BROKER_ADDRESS", f"{dead}, {nats_server.url}")
    broker = microbroker.get_broker()
    assert isinstance(broker, NatsBroker)
    assert broker.servers == [f"nats://{dead}", nats_server.url]
    inbox = Recorder()
    async with broker:
        await broker.subscribe("env.list", inbox)
        await broker.publish("env.list", microbroker.Message(b"via the list"))
        await eventually(lambda: inbox.bodies == [b"via the list"], "delivery")


async def test_wrong_address_fails_with_a_clear_error(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    broker = NatsBroker(f"nats://127.0.0.1:{port}", reconnect_time_wait=0.05)
    with pytest.raises(NatsConnectError) as caught:
        await broker.connect()
    # The error says it all: no "disconnected, reconnecting" warning from the failed attempt.
    assert not [r for r in caplog.records if r.name.startswith("microbroker")], caplog.text
    message = str(caught.value)
    assert f"127.0.0.1:{port}" in message
    assert "MICRO_BROKER_ADDRESS" in message
    assert isinstance(caught.value, microbroker.MicrobrokerError)
    assert not broker.connected
    with pytest.raises(microbroker.NotConnected):
        await broker.publish("x", microbroker.Message(b"x"))


@pytest.mark.parametrize(
    ("server_auth", "refused", "accepted"),
    [
        ({"token": "s3cret"}, {"token": "wrong"}, {"token": "s3cret"}),
        ({"token": "s3cret"}, {}, {"token": "s3cret"}),
        (
            {"user": "app", "password": "pa55"},
            {"user": "app", "password": "nope"},
            {"user": "app", "password": "pa55"},
        ),
    ],
    ids=["wrong-token", "no-token", "wrong-password"],
)
async def test_refused_credentials_give_a_clear_error(
    new_nats_server: Callable[..., NatsServer],
    server_auth: dict[str, str],
    refused: dict[str, str],
    accepted: dict[str, str],
) -> None:
    server = new_nats_server(**server_auth)
    broker = NatsBroker(server.url, reconnect_time_wait=0.05, **refused)
    with pytest.raises(NatsAuthError) as caught:
        await broker.connect()
    assert "refused the credentials" in str(caught.value)
    assert not broker.connected
    async with NatsBroker(server.url, **accepted) as allowed:
        inbox = Recorder()
        await allowed.subscribe("auth.ok", inbox)
        await allowed.publish("auth.ok", microbroker.Message(b"in"))
        await eventually(lambda: inbox.bodies == [b"in"], "delivery with good credentials")


async def test_options_come_from_the_environment(
    new_nats_server: Callable[..., NatsServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = new_nats_server(token="from-env")
    monkeypatch.setenv("MICRO_NATS_TOKEN", "from-env")
    monkeypatch.setenv("MICRO_NATS_DRAIN_TIMEOUT", "7.5")
    broker = NatsBroker(server.url)
    assert broker.settings.drain_timeout == 7.5
    async with broker:
        assert broker.connected


def test_unknown_options_are_refused_with_the_list_of_known_ones() -> None:
    with pytest.raises(TypeError, match=r"does not take option.*jetstrem.*jetstream"):
        NatsBroker("nats://127.0.0.1:1", jetstrem=True)
    with pytest.raises(ValueError, match="storage"):
        NatsBroker("nats://127.0.0.1:1", storage="disk")


async def test_headers_are_native_nats_headers(nats_server: NatsServer) -> None:
    """Other NATS clients see microbroker's headers as NATS headers, and the reverse."""
    raw = await nats.connect(nats_server.url)
    seen: list[nats.aio.msg.Msg] = []

    async def on_raw(msg: nats.aio.msg.Msg) -> None:
        seen.append(msg)

    await raw.subscribe("hdr.out", cb=on_raw)
    await synced(raw)
    inbox = Recorder()
    try:
        async with NatsBroker(nats_server.url) as broker:
            await broker.subscribe("hdr.in", inbox)
            headers = {"Content-Type": "application/json", "X-Unicode": "wörld ✓"}
            await broker.publish("hdr.out", microbroker.Message(b"{}", dict(headers)))
            await raw.publish("hdr.in", b"raw", headers={"X-From": "nats-py"})
            await eventually(lambda: len(inbox) >= 1, "nats-py's message reaching microbroker")
            await eventually(lambda: len(seen) >= 1, "microbroker's message reaching nats-py")
            await synced(raw)
            await synced(broker.client)
            assert len(seen) == 1
            assert len(inbox) == 1
            assert seen[0].headers == headers
            assert inbox.deliveries[0].message.headers == {"X-From": "nats-py"}
            assert inbox.deliveries[0].message.header("x-from") == "nats-py"
    finally:
        await raw.close()


async def test_queue_group_is_a_nats_queue_subscription(nats_server: NatsServer) -> None:
    """A nats-py member of the same queue group shares the messages with microbroker's."""
    raw = await nats.connect(nats_server.url)
    raw_bodies: list[bytes] = []

    async def on_raw(msg: nats.aio.msg.Msg) -> None:
        raw_bodies.append(msg.data)

    await raw.subscribe("queue.shared", queue="workers", cb=on_raw)
    await synced(raw)
    member = Recorder()
    try:
        async with NatsBroker(nats_server.url) as sub, NatsBroker(nats_server.url) as pub:
            await sub.subscribe("queue.shared", member, queue="workers")
            total = 200
            for n in range(total):
                await pub.publish("queue.shared", microbroker.Message(str(n).encode()))
            await eventually(lambda: len(member) + len(raw_bodies) >= total, "all deliveries")
            await synced(pub.client)
            await asyncio.sleep(0.2)
            assert len(member) + len(raw_bodies) == total
            assert set(member.bodies).isdisjoint(raw_bodies)
            assert member.deliveries, "the microbroker member gets a share"
            assert raw_bodies, "the nats-py member gets a share"
            assert all(d.queue == "workers" for d in member.deliveries)
    finally:
        await raw.close()


async def test_disconnect_drains_what_is_in_flight(nats_server: NatsServer) -> None:
    """Messages the server already sent are handled before disconnect() returns."""
    handled: list[bytes] = []

    async def slow(delivery: microbroker.Delivery) -> None:
        await asyncio.sleep(0.001)
        handled.append(delivery.message.body)

    sub = NatsBroker(nats_server.url)
    await sub.connect()
    await sub.subscribe("drain.me", slow)
    async with NatsBroker(nats_server.url) as pub:
        for n in range(300):
            await pub.publish("drain.me", microbroker.Message(str(n).encode()))
        await synced(pub.client)
    await sub.disconnect()
    assert len(handled) == 300
    assert handled == [str(n).encode() for n in range(300)]


async def test_invalid_topics_are_refused(nats_server: NatsServer) -> None:
    async with NatsBroker(nats_server.url) as broker:
        with pytest.raises(microbroker.InvalidTopic, match="wildcard"):
            await broker.publish("orders.*", microbroker.Message(b"x"))
        with pytest.raises(microbroker.InvalidTopic):
            await broker.subscribe("orders.>.late", Recorder())
        with pytest.raises(microbroker.InvalidTopic):
            await broker.subscribe("orders created", Recorder())
        with pytest.raises(microbroker.InvalidTopic):
            await broker.publish("", microbroker.Message(b"x"))
        assert broker.connected


async def test_unsubscribe_from_inside_the_handler(nats_server: NatsServer) -> None:
    async with NatsBroker(nats_server.url) as broker:
        got: list[bytes] = []
        subscription: list[microbroker.Subscriber] = []

        async def once(delivery: microbroker.Delivery) -> None:
            got.append(delivery.message.body)
            await subscription[0].unsubscribe()

        subscription.append(await broker.subscribe("self.unsub", once))
        await broker.publish("self.unsub", microbroker.Message(b"1"))
        await eventually(lambda: got == [b"1"], "the first message")
        await broker.publish("self.unsub", microbroker.Message(b"2"))
        await synced(broker.client)
        await asyncio.sleep(0.2)
        assert got == [b"1"]
        assert not subscription[0].active


async def test_subscribe_returns_once_the_server_has_the_subscription(
    nats_server: NatsServer,
) -> None:
    """A message published from another connection right after subscribe() returns arrives.

    nats-py's own ``subscribe(); flush()`` does not promise this (its PING overtakes
    the SUB), so each of these rounds could lose its message without the broker's
    round trip.
    """
    rounds = 200
    async with NatsBroker(nats_server.url) as sub, NatsBroker(nats_server.url) as pub:
        inbox = Recorder()
        for n in range(rounds):
            await sub.subscribe(f"fresh.{n}", inbox)
            await pub.publish(f"fresh.{n}", microbroker.Message(str(n).encode()))
        await eventually(lambda: len(inbox) == rounds, f"{rounds} deliveries")
        assert sorted(inbox.bodies, key=int) == [str(n).encode() for n in range(rounds)]
        seen_topics = {d.topic for d in inbox.deliveries}
        assert seen_topics == {f"fresh.{n}" for n in range(rounds)}


async def test_typed_subscribers_read_content_type_however_it_is_spelt(
    nats_server: NatsServer,
) -> None:
    """Headers are parsed lazily; Content-Type is found in any case, and the last one wins."""
    raw = await nats.connect(nats_server.url)
    got: list[tuple[dict[str, object], str | None, dict[str, str]]] = []
    service = microbroker.Service("lazy", broker=NatsBroker(nats_server.url))

    @service.subscriber("lazy.headers")
    async def on(value: dict[str, object], ctx: microbroker.Context) -> None:
        got.append((value, ctx.content_type, ctx.metadata.to_headers()))

    try:
        async with service:
            await raw.publish(
                "lazy.headers", b'{"n":1}', headers={"Content-Type": "application/json"}
            )
            await raw.publish(
                "lazy.headers", b'{"n":2}', headers={"content-type": "application/json"}
            )
            await raw.publish(
                "lazy.headers",
                b'{"n":3}',
                headers={"X-A": "1", "Content-Type": "  application/json ", "X-B": "ü"},
            )
            await raw.publish("lazy.headers", b'{"n":4}')
            await eventually(lambda: len(got) == 4, "four typed deliveries")
    finally:
        await raw.close()
    assert [value for value, _, _ in got] == [{"n": 1}, {"n": 2}, {"n": 3}, {"n": 4}]
    assert [content_type for _, content_type, _ in got] == [
        "application/json",
        "application/json",
        "application/json",
        None,
    ]
    assert got[2][2] == {"X-A": "1", "Content-Type": "application/json", "X-B": "ü"}
    assert got[1][2] == {"content-type": "application/json"}
