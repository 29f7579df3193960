"""JetStream mode: stored publishes, durable consumers, ack/nack, max_deliver, stream binding."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable

import nats
import pytest
from nats.js import JetStreamContext
from nats_helpers import Recorder, eventually
from support.nats_server import NatsServer

import microbroker
from microbroker_nats import NatsBroker, StreamError, durable_name


def unique(prefix: str) -> str:
    return f"{prefix}.{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def jsm(jetstream_server: NatsServer) -> AsyncIterator[JetStreamContext]:
    """A raw nats-py JetStream context, to look at what the broker did on the server."""
    nc = await nats.connect(jetstream_server.url)
    try:
        yield nc.jetstream()
    finally:
        await nc.close()


async def test_capabilities_declare_at_least_once(jetstream_server: NatsServer) -> None:
    caps = NatsBroker(jetstream_server.url, jetstream=True).capabilities
    assert caps.ack
    assert caps.at_least_once
    assert caps.persistence
    assert caps.queue_groups
    memory = NatsBroker(jetstream_server.url, jetstream=True, storage="memory").capabilities
    assert memory.at_least_once
    assert not memory.persistence
    core = NatsBroker(jetstream_server.url).capabilities
    assert not core.ack
    assert not core.at_least_once
    assert core.reconnect


async def test_publish_returns_once_the_server_stored_it(
    jetstream_server: NatsServer, jsm: JetStreamContext
) -> None:
    topic = unique("stored")
    async with NatsBroker(jetstream_server.url, jetstream=True) as broker:
        await broker.publish(topic, microbroker.Message(b"kept", {"X-K": "v"}))
        stored = await jsm.get_last_msg("MICROBROKER", topic)
        assert stored.data == b"kept"
        assert stored.headers is not None
        assert stored.headers["X-K"] == "v"


async def test_republishing_a_micro_id_stores_it_once(
    jetstream_server: NatsServer, jsm: JetStreamContext
) -> None:
    topic = unique("dedupe")
    async with NatsBroker(jetstream_server.url, jetstream=True) as broker:
        for _ in range(3):
            await broker.publish(topic, microbroker.Message(b"once", {"Micro-Id": "id-1"}))
        await broker.publish(topic, microbroker.Message(b"other", {"Micro-Id": "id-2"}))
    info = await jsm.stream_info("MICROBROKER", subjects_filter=topic)
    assert info.state.subjects == {topic: 2}


async def test_queue_group_reads_a_durable_consumer_that_outlives_its_members(
    jetstream_server: NatsServer, jsm: JetStreamContext
) -> None:
    topic = unique("durable")
    name = durable_name("billing", topic)
    assert name.startswith("billing_")
    async with NatsBroker(
        jetstream_server.url, jetstream=True, ack_wait=7, max_deliver=5
    ) as broker:
        first = Recorder()
        sub = await broker.subscribe(topic, first, queue="billing")
        consumer = await jsm.consumer_info("MICROBROKER", name)
        assert consumer.config.deliver_group == "billing"
        assert consumer.config.ack_wait == 7
        assert consumer.config.max_deliver == 5
        await broker.publish(topic, microbroker.Message(b"one"))
        await eventually(lambda: first.bodies == [b"one"], "the first message")
        await sub.unsubscribe()
        # Published while the group has no member: kept for the next one.
        await broker.publish(topic, microbroker.Message(b"while away"))
        later = Recorder()
        await broker.subscribe(topic, later, queue="billing")
        await eventually(lambda: later.bodies == [b"while away"], "the kept message")
    assert (await jsm.consumer_info("MICROBROKER", name)).config.durable_name == name


async def test_a_broadcast_consumer_is_deleted_on_unsubscribe(
    jetstream_server: NatsServer, jsm: JetStreamContext
) -> None:
    topic = unique("broadcast")
    async with NatsBroker(jetstream_server.url, jetstream=True) as broker:
        sub = await broker.subscribe(topic, Recorder())
        consumer = getattr(sub, "consumer", None)
        assert consumer is not None
        await jsm.consumer_info("MICROBROKER", consumer)
        await sub.unsubscribe()
        with pytest.raises(nats.js.errors.NotFoundError):
            await jsm.consumer_info("MICROBROKER", consumer)


async def test_nack_with_a_delay_is_redelivered_with_its_attempt(
    jetstream_server: NatsServer,
) -> None:
    topic = unique("nakdelay")
    seen: list[microbroker.Delivery] = []

    async def handler(delivery: microbroker.Delivery) -> None:
        seen.append(delivery)
        if delivery.attempt == 1:
            await delivery.nack(delay=0.2)

    async with NatsBroker(jetstream_server.url, jetstream=True) as broker:
        await broker.subscribe(topic, handler)
        await broker.publish(topic, microbroker.Message(b"again", {"X-Keep": "me"}))
        await eventually(lambda: len(seen) >= 2, "the redelivery")
        first, second = seen[:2]
        assert (first.attempt, second.attempt) == (1, 2)
        assert first.nacked
        assert second.acked
        assert second.message.body == b"again"
        assert second.message.header("X-Keep") == "me"


async def test_max_deliver_gives_up_and_reports_it(jetstream_server: NatsServer) -> None:
    topic = unique("poison")
    errors: list[BaseException] = []
    attempts: list[int] = []

    class Catcher:
        @microbroker.hookimpl
        def on_error(self, error: BaseException, delivery: microbroker.Delivery | None) -> None:
            errors.append(error)

    async def always_fails(delivery: microbroker.Delivery) -> None:
        attempts.append(delivery.attempt)
        raise RuntimeError("poison message")

    catcher = Catcher()
    microbroker.register_plugin(catcher, name="nats-js-catcher")
    try:
        async with NatsBroker(
            jetstream_server.url, jetstream=True, max_deliver=3, redelivery_delay=0.01
        ) as broker:
            await broker.subscribe(topic, always_fails)
            await broker.publish(topic, microbroker.Message(b"bad"))
            await eventually(
                lambda: any("given up after 3 deliveries" in str(e) for e in errors),
                "the give-up report",
            )
            await asyncio.sleep(0.5)
    finally:
        microbroker.unregister_plugin(catcher)
    assert attempts == [1, 2, 3]


async def test_configured_subjects_bind_the_stream_and_refuse_others(
    jetstream_server: NatsServer, jsm: JetStreamContext
) -> None:
    stream = f"ORDERS_{uuid.uuid4().hex[:8]}"
    options = {"jetstream": True, "stream": stream, "subjects": ["orders.>"]}
    async with NatsBroker(jetstream_server.url, **options) as broker:
        info = await jsm.stream_info(stream)
        assert info.config.subjects == ["orders.>"]
        inbox = Recorder()
        await broker.subscribe("orders.created", inbox)
        await broker.publish("orders.created", microbroker.Message(b"ok"))
        await eventually(lambda: inbox.bodies == [b"ok"], "delivery")
        with pytest.raises(microbroker.PublishError, match="subjects"):
            await broker.publish("invoices.created", microbroker.Message(b"no stream"))
        with pytest.raises(StreamError, match="subjects"):
            await broker.subscribe("invoices.created", Recorder())
    # A second broker binds to the existing stream and adds the subjects it is given.
    more = {**options, "subjects": ["refunds.>"]}
    async with NatsBroker(jetstream_server.url, **more):
        info = await jsm.stream_info(stream)
        assert sorted(info.config.subjects) == ["orders.>", "refunds.>"]


async def test_wildcard_subscription_widens_the_stream_subjects(
    jetstream_server: NatsServer,
) -> None:
    root = unique("widen").replace(".", "_")
    async with NatsBroker(jetstream_server.url, jetstream=True) as broker:
        exact = Recorder()
        await broker.subscribe(f"{root}.a", exact)
        wide = Recorder()
        await broker.subscribe(f"{root}.>", wide)
        await broker.publish(f"{root}.a", microbroker.Message(b"a"))
        await broker.publish(f"{root}.b.c", microbroker.Message(b"bc"))
        await eventually(lambda: len(wide) == 2 and len(exact) == 1, "deliveries")
        assert sorted(wide.bodies) == [b"a", b"bc"]


async def test_jetstream_on_a_server_without_it_is_a_clear_error(
    nats_server: NatsServer,
) -> None:
    broker = NatsBroker(nats_server.url, jetstream=True, publish_timeout=2)
    with pytest.raises(StreamError, match="-js"):
        await broker.connect()
    assert not broker.connected


async def test_deliver_policy_all_replays_the_stream(
    new_nats_server: Callable[..., NatsServer],
) -> None:
    server = new_nats_server(jetstream=True)
    async with NatsBroker(server.url, jetstream=True) as pub:
        for n in range(3):
            await pub.publish("history.x", microbroker.Message(str(n).encode()))
    async with NatsBroker(server.url, jetstream=True, deliver_policy="all") as late:
        inbox = Recorder()
        await late.subscribe("history.x", inbox, queue="replay")
        await eventually(lambda: len(inbox) == 3, "the replayed messages")
        assert inbox.bodies == [b"0", b"1", b"2"]
