"""JetStream mode: stored publishes, durable consumers, ack/nack, give-up (+TERM), streams."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable

import nats
import pytest
from nats.js import JetStreamContext
from nats_helpers import Recorder, eventually, eventually_async, synced
from support.nats_server import NatsServer

import microbroker
from microbroker.conformance import ErrorCatcher
from microbroker.transport import ATTEMPTS, DEFAULT_RETRY
from microbroker_nats import NatsBroker, StreamError, durable_name


def unique(prefix: str) -> str:
    return f"{prefix}.{uuid.uuid4().hex[:10]}"


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


@pytest.mark.parametrize("spelling", ["Micro-ID", "Micro-Id", "micro-id"])
async def test_republishing_a_micro_id_stores_it_once(
    jetstream_server: NatsServer, jsm: JetStreamContext, spelling: str
) -> None:
    """The Micro-ID header, read in any case, is the message's Nats-Msg-Id."""
    topic = unique("dedupe")
    # Ids are the stream's, not a topic's: unique to this test.
    one, two, three = (f"{topic}-{n}" for n in (1, 2, 3))
    async with NatsBroker(jetstream_server.url, jetstream=True) as broker:
        for _ in range(3):
            await broker.publish(topic, microbroker.Message(b"once", {spelling: one}))
        await broker.publish(topic, microbroker.Message(b"other", {spelling: two}))
        await broker.publish(topic, microbroker.Message(b"own id"), msg_id=three)
        await broker.publish(topic, microbroker.Message(b"own id"), msg_id=three)
    info = await jsm.stream_info("MICROBROKER", subjects_filter=topic)
    assert info.state.subjects == {topic: 3}
    stored = await jsm.get_last_msg("MICROBROKER", topic)
    assert stored.headers is not None
    assert stored.headers["Nats-Msg-Id"] == three


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
        info = await jsm.consumer_info("MICROBROKER", consumer)
        # Giving up is the retry policy's: the server's own limit is off by default.
        assert info.config.max_deliver == -1
        assert info.config.ack_wait == 30
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


async def test_a_poison_message_is_terminated_after_the_default_attempts(
    jetstream_server: NatsServer, jsm: JetStreamContext
) -> None:
    """No retry policy: DEFAULT_RETRY's attempts, the dead letter, then +TERM to the server.

    The server confirms it: a ``MSG_TERMINATED`` advisory for the message, and the
    consumer has nothing pending, ack-pending or redelivered afterwards. The consumer's
    ack_wait is short, so a give-up that only acked locally would show as a redelivery.
    """
    topic = unique("poison")
    attempts: list[int] = []
    advisories: list[dict[str, object]] = []

    async def always_fails(delivery: microbroker.Delivery) -> None:
        attempts.append(delivery.attempt)
        raise RuntimeError("poison message")

    raw = await nats.connect(jetstream_server.url)
    try:
        async with NatsBroker(jetstream_server.url, jetstream=True, ack_wait=1) as broker:
            dead = Recorder()
            await broker.subscribe(f"{topic}.dlq", dead)
            with ErrorCatcher() as errors:
                sub = await broker.subscribe(topic, always_fails)
                consumer = getattr(sub, "consumer", None)
                assert consumer is not None

                async def on_advisory(msg: nats.aio.msg.Msg) -> None:
                    advisories.append(json.loads(msg.data))

                await raw.subscribe(
                    f"$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.MICROBROKER.{consumer}",
                    cb=on_advisory,
                )
                await synced(raw)
                await broker.publish(topic, microbroker.Message(b"bad", {"X-K": "v"}))
                await errors.wait_for(microbroker.GivenUp, 30)
                await eventually(lambda: len(dead) == 1, "the dead letter")
                await eventually(lambda: len(advisories) == 1, "the server's MSG_TERMINATED")

                async def settled() -> bool:
                    info = await jsm.consumer_info("MICROBROKER", consumer)
                    return (info.num_ack_pending, info.num_redelivered, info.num_pending) == (
                        0,
                        0,
                        0,
                    )

                await eventually_async(settled, "a consumer with nothing left to deliver")
            expected = list(range(1, DEFAULT_RETRY.max_attempts + 1))
            assert attempts == expected
            (given_up, delivery), *more = errors.of(microbroker.GivenUp)
            assert not more
            assert given_up.attempts == DEFAULT_RETRY.max_attempts
            assert given_up.dead_letter == f"{topic}.dlq"
            assert delivery is not None
            assert delivery.rejected
            assert advisories[0]["consumer"] == consumer
            assert advisories[0]["deliveries"] == DEFAULT_RETRY.max_attempts
            letter = dead.deliveries[0].message
            assert letter.body == b"bad"
            assert letter.header("X-K") == "v"
            assert letter.header(ATTEMPTS) == str(DEFAULT_RETRY.max_attempts)
            # A message published after the give-up is the next one handled: no redelivery.
            await broker.publish(topic, microbroker.Message(b"next"))
            await eventually(lambda: len(attempts) == len(expected) + 1, "the next message")
            assert attempts[-1] == 1
    finally:
        await raw.close()


async def test_an_event_is_dead_lettered_with_an_id_of_its_own(
    jetstream_server: NatsServer, jsm: JetStreamContext
) -> None:
    """issue 18: the dead letter of an Event used to keep the original's Micro-ID, which went
    out as Nats-Msg-Id, and JetStream dropped it as a duplicate. Now it is stored."""
    topic = unique("event.dlq")
    tried: list[microbroker.Delivery] = []
    policy = microbroker.RetryPolicy(max_attempts=2, backoff=0.05)
    service = microbroker.Service(
        "js-events", broker=NatsBroker(jetstream_server.url, jetstream=True)
    )

    @service.subscriber(topic, retry=policy)
    async def on_order(order: dict[str, int], ctx: microbroker.Context) -> None:
        tried.append(ctx.delivery)
        raise ValueError("this order never works")

    async with NatsBroker(jetstream_server.url, jetstream=True) as watcher:
        dead = Recorder()
        await watcher.subscribe(f"{topic}.dlq", dead)
        with ErrorCatcher() as errors:
            async with service:
                await service.event(topic).publish({"order": 1}, metadata={"Tenant": "t"})
                await eventually(lambda: len(dead) == 1, "the dead letter")
                await errors.wait_for(microbroker.GivenUp, 10)
        original = tried[0].message
        assert [d.attempt for d in tried] == [1, 2]
        stored = await jsm.get_last_msg("MICROBROKER", f"{topic}.dlq")
        assert stored.headers is not None
        assert stored.headers["Nats-Msg-Id"] == stored.headers["Micro-ID"]
        assert stored.headers["Micro-ID"] != original.header("Micro-ID")
        assert stored.headers["Micro-Original-ID"] == original.header("Micro-ID")
        assert dead.deliveries[0].message.header("tenant") == "t"
        assert not [e for e, _ in errors.errors if isinstance(e, microbroker.PublishError)]


async def test_a_different_message_with_a_stored_id_is_an_error_not_a_silent_drop(
    jetstream_server: NatsServer, jsm: JetStreamContext
) -> None:
    """JetStream answers duplicate=True for any message whose Nats-Msg-Id it stored within
    duplicate_window. The same message again is what the id is for; another one raises."""
    topic = unique("sameid")
    async with NatsBroker(jetstream_server.url, jetstream=True) as broker:
        order = f"order-{topic}"
        first = microbroker.Message(b"first", {"Micro-ID": order, "X-V": "1"})
        await broker.publish(topic, first)
        await broker.publish(topic, microbroker.Message(b"first", dict(first.headers)))
        with pytest.raises(microbroker.PublishError, match=f"'{order}'.*another message"):
            await broker.publish(topic, microbroker.Message(b"second", {"Micro-ID": order}))
        with pytest.raises(microbroker.PublishError, match="another message"):
            await broker.publish(
                topic, microbroker.Message(b"first", {"Micro-ID": order, "X-V": "2"})
            )
        with pytest.raises(microbroker.PublishError, match="another message"):
            await broker.publish(f"{topic}.other", microbroker.Message(b"first", first.headers))
        assert broker.connected
    info = await jsm.stream_info("MICROBROKER", subjects_filter=topic)
    assert info.state.subjects == {topic: 1}


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
