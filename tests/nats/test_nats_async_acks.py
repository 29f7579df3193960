"""JetStream with ``publish_acks="async"``: many publishes in flight, none of them lost.

``publish()`` returns once the message is written; its acknowledgement is
awaited in the background, at most ``max_pending_acks`` at once. What JetStream
does not acknowledge reaches the ``on_error`` hooks and ``flush()``; disconnect
waits for what is pending. Every test talks to a real nats-server.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Callable

import nats
import pytest
from nats.js import JetStreamContext
from nats_helpers import eventually
from support.nats_server import NatsServer

import microbroker
from microbroker.conformance import ErrorCatcher
from microbroker_nats import NatsBroker, UnackedPublish, UnackedPublishes


def unique(prefix: str) -> str:
    return f"{prefix}.{uuid.uuid4().hex[:10]}"


async def stored(jsm: JetStreamContext, stream: str, topic: str) -> int:
    info = await jsm.stream_info(stream, subjects_filter=topic)
    return (info.state.subjects or {}).get(topic, 0)


def test_the_option_is_checked_and_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(ValueError, match="publish_acks"):
        NatsBroker(jetstream=True, publish_acks="later")
    with pytest.raises(ValueError, match="max_pending_acks"):
        NatsBroker(jetstream=True, publish_acks="async", max_pending_acks=0)
    monkeypatch.setenv("MICRO_NATS_PUBLISH_ACKS", "async")
    monkeypatch.setenv("MICRO_NATS_MAX_PENDING_ACKS", "16")
    settings = NatsBroker(jetstream=True).settings
    assert (settings.publish_acks, settings.max_pending_acks) == ("async", 16)
    assert NatsBroker().settings.publish_acks == "async"  # read; used in JetStream mode only
    monkeypatch.delenv("MICRO_NATS_PUBLISH_ACKS")
    assert NatsBroker(jetstream=True).settings.publish_acks == "sync"


async def test_10000_async_publishes_are_all_stored_and_delivered(
    jetstream_server: NatsServer, jsm: JetStreamContext
) -> None:
    """publish() does not wait for the acks (many pending at once), and none is lost."""
    topic = unique("async.all")
    total = 10_000
    counts: Counter[int] = Counter()

    async def handler(delivery: microbroker.Delivery) -> None:
        counts[int(delivery.message.body)] += 1

    with ErrorCatcher() as errors:
        async with (
            NatsBroker(jetstream_server.url, jetstream=True) as sub,
            NatsBroker(jetstream_server.url, jetstream=True, publish_acks="async") as pub,
        ):
            await sub.subscribe(topic, handler, queue="workers")
            most = 0
            for n in range(total):
                await pub.publish(topic, microbroker.Message(str(n).encode()))
                most = max(most, pub.pending_acks)
            await pub.flush()
            assert pub.pending_acks == 0
            assert await stored(jsm, "MICROBROKER", topic) == total
            await eventually(lambda: len(counts) == total, f"delivery of all {total}", 60)
    assert most > 1, "publish() waited for each acknowledgement"
    assert most <= 4000, "more acknowledgements pending than max_pending_acks"
    assert set(counts) == set(range(total))
    assert not errors.errors


async def test_concurrent_sync_publishes_share_one_inbox_in_flight(
    jetstream_server: NatsServer, jsm: JetStreamContext
) -> None:
    """Without the option, publishes from separate tasks are in flight together too."""
    topic = unique("sync.concurrent")
    async with NatsBroker(jetstream_server.url, jetstream=True) as broker:
        await broker.publish(topic, microbroker.Message(b"first"))
        seen: list[int] = []

        async def one(n: int) -> None:
            await broker.publish(topic, microbroker.Message(str(n).encode()))
            seen.append(broker.pending_acks)

        await asyncio.gather(*(one(n) for n in range(200)))
        assert max(seen) > 1
        assert await stored(jsm, "MICROBROKER", topic) == 201


async def test_a_publish_waits_while_max_pending_acks_are_unacknowledged(
    new_nats_server: Callable[..., NatsServer],
) -> None:
    """Backpressure at the bound: the publish beyond it waits (never drops) until acks come."""
    server = new_nats_server(jetstream=True)
    topic = unique("async.bound")
    async with NatsBroker(
        server.url, jetstream=True, publish_acks="async", max_pending_acks=10
    ) as broker:
        await broker.publish(topic, microbroker.Message(b"0"))
        await broker.flush()  # the topic's stream is known; nothing pending
        server.pause()
        try:
            for n in range(1, 11):
                await broker.publish(topic, microbroker.Message(str(n).encode()))
            assert broker.pending_acks == 10
            beyond = asyncio.create_task(broker.publish(topic, microbroker.Message(b"11")))
            publisher = broker._publisher
            assert publisher is not None
            await eventually(lambda: publisher._room is not None, "the publish waiting for room")
            assert not beyond.done()
            assert broker.pending_acks == 10
        finally:
            server.resume()
        await asyncio.wait_for(beyond, 30)
        await broker.flush()
        raw = await nats.connect(server.url)
        try:
            assert await stored(raw.jetstream(), "MICROBROKER", topic) == 12
        finally:
            await raw.close()


async def test_an_ack_refused_by_jetstream_reaches_on_error_and_flush(
    jetstream_server: NatsServer, jsm: JetStreamContext
) -> None:
    """JetStream refuses a message over its stream's max_msg_size: the publish had returned,
    so the refusal goes to on_error and flush(), with the topic, the Micro-ID and the message."""
    root = unique("refused").replace(".", "_")
    stream = f"SMALL_{uuid.uuid4().hex[:8]}"
    await jsm.add_stream(name=stream, subjects=[f"{root}.>"], max_msg_size=1024)
    topic = f"{root}.big"
    options = {"jetstream": True, "stream": stream, "subjects": [f"{root}.>"]}
    with ErrorCatcher() as errors:
        async with NatsBroker(jetstream_server.url, publish_acks="async", **options) as broker:
            big = microbroker.Message(b"x" * 2000, {"Micro-ID": f"big-{root}"})
            await broker.publish(topic, microbroker.Message(b"small"))
            await broker.publish(topic, big)
            await broker.publish(topic, microbroker.Message(b"small too"))
            with pytest.raises(UnackedPublishes) as raised:
                await broker.flush()
            assert raised.value.count == 1
            (failure,) = raised.value.failures
            assert failure.topic == topic
            assert failure.message_id == f"big-{root}"
            assert failure.message is big
            assert "refused" in failure.reason
            assert isinstance(failure, microbroker.PublishError)
            await broker.flush()  # reported once: the next flush is clean
            reported = [e for e, _ in errors.of(UnackedPublish)]
            assert reported == [failure]
            assert broker.connected
    assert await stored(jsm, stream, topic) == 2


async def test_publishes_to_a_deleted_stream_each_reach_on_error_and_flush(
    jetstream_server: NatsServer, jsm: JetStreamContext
) -> None:
    """The stream deleted under a publisher with acks pending: nobody answers (503), the
    broker looks the stream up again, finds it gone and gives each publish up, reported."""
    root = unique("deleted").replace(".", "_")
    stream = f"GONE_{uuid.uuid4().hex[:8]}"
    topic = f"{root}.x"
    options = {"jetstream": True, "stream": stream, "subjects": [f"{root}.>"]}
    with ErrorCatcher() as errors:
        async with NatsBroker(jetstream_server.url, publish_acks="async", **options) as broker:
            await broker.publish(topic, microbroker.Message(b"stored"))
            await broker.flush()
            await jsm.delete_stream(stream)
            ids = [f"{root}-{n}" for n in range(5)]
            for msg_id in ids:
                await broker.publish(topic, microbroker.Message(b"lost?", {"Micro-ID": msg_id}))
            with pytest.raises(UnackedPublishes) as raised:
                await broker.flush()
            assert raised.value.count == 5
            assert sorted(f.message_id for f in raised.value.failures) == ids
            assert all(f.topic == topic for f in raised.value.failures)
            assert "gone" in raised.value.failures[0].reason
            assert sorted(e.message_id for e, _ in errors.of(UnackedPublish)) == ids


async def test_disconnect_waits_for_the_pending_acks(
    new_nats_server: Callable[..., NatsServer],
) -> None:
    """Acks pending when disconnect() begins (the server frozen) are waited for, not dropped."""
    server = new_nats_server(jetstream=True)
    topic = unique("async.disconnect")
    broker = NatsBroker(server.url, jetstream=True, publish_acks="async")
    with ErrorCatcher() as errors:
        await broker.connect()
        await broker.publish(topic, microbroker.Message(b"0"))
        await broker.flush()
        server.pause()
        try:
            for n in range(1, 101):
                await broker.publish(topic, microbroker.Message(str(n).encode()))
            assert broker.pending_acks == 100
            closing = asyncio.create_task(broker.disconnect())
            await eventually(lambda: not broker.connected, "disconnect() under way")
            assert not closing.done()
        finally:
            server.resume()
        await asyncio.wait_for(closing, 30)
    assert not errors.of(UnackedPublish)
    raw = await nats.connect(server.url)
    try:
        assert await stored(raw.jetstream(), "MICROBROKER", topic) == 101
    finally:
        await raw.close()
