"""The kafka broker's own promises against a real tansu: groups, commits, keys, crashes, errors."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from kafka_helpers import FAST, committed_offsets, eventually
from support.kafka_server import KafkaServer
from support.process import free_port

import microbroker
from microbroker import Delivery, Message, RetryPolicy, get_broker
from microbroker_kafka import KafkaBroker, KafkaConnectError, KafkaDelivery, SubscribeError

HERE = Path(__file__).parent


def topic() -> str:
    return f"kafka-test.{uuid.uuid4().hex[:10]}"


async def test_registered_under_kafka(kafka_server: KafkaServer) -> None:
    broker = get_broker("kafka", address=kafka_server.address, **FAST)
    assert isinstance(broker, KafkaBroker)
    assert str(broker) == "kafka"


async def test_wrong_address_fails_clearly() -> None:
    port = free_port()
    broker = KafkaBroker(f"127.0.0.1:{port}", request_timeout=2.0)
    with pytest.raises(KafkaConnectError, match=f"127.0.0.1:{port}"):
        await asyncio.wait_for(broker.connect(), 30)
    assert not broker.connected


def test_malformed_address_and_unknown_option_fail_clearly() -> None:
    with pytest.raises(ValueError, match="host:port"):
        KafkaBroker("localhost")
    with pytest.raises(TypeError, match="unknown kafka option"):
        KafkaBroker("127.0.0.1:9092", lingr=0.1)


async def test_two_members_of_a_group_split_the_partitions(
    kafka_server: KafkaServer, kafka_client: str
) -> None:
    t = topic()
    got: dict[str, list[KafkaDelivery]] = {"a": [], "b": []}
    brokers = [KafkaBroker(kafka_server.address, **{**FAST, "partitions": 4}) for _ in range(3)]
    pub, a, b = brokers
    for broker in brokers:
        await broker.connect()
    try:

        def recorder(name: str):  # type: ignore[no-untyped-def]
            async def handler(delivery: Delivery) -> None:
                assert isinstance(delivery, KafkaDelivery)
                got[name].append(delivery)

            return handler

        await a.subscribe(t, recorder("a"), queue="split")
        await b.subscribe(t, recorder("b"), queue="split")
        # Wait for the rebalance that gives b its half (a held all four before).
        for n in range(40):
            await pub.publish(t, Message(str(n).encode()), key=f"k{n}")
        await eventually(
            lambda: len({d.message.body for ds in got.values() for d in ds}) >= 40,
            30,
            "delivery of 40 messages to the group",
        )
        bodies = Counter(d.message.body for ds in got.values() for d in ds)
        assert set(bodies) == {str(n).encode() for n in range(40)}
        assert got["a"], "member a got no share of the partitions"
        assert got["b"], "member b got no share of the partitions"
        parts_a = {d.partition for d in got["a"]}
        parts_b = {d.partition for d in got["b"]}
        assert not parts_a & parts_b, f"a partition read by both members: {parts_a & parts_b}"
    finally:
        for broker in brokers:
            await broker.disconnect()


async def test_records_of_one_key_keep_their_order(kafka_server: KafkaServer) -> None:
    t = topic()
    async with (
        KafkaBroker(kafka_server.address, **{**FAST, "partitions": 4}) as pub,
        KafkaBroker(kafka_server.address, **{**FAST, "partitions": 4}) as sub,
    ):
        seen: list[KafkaDelivery] = []

        async def handler(delivery: Delivery) -> None:
            assert isinstance(delivery, KafkaDelivery)
            seen.append(delivery)

        await sub.subscribe(t, handler)
        for n in range(100):
            key = ("red", "green", "blue")[n % 3]
            await pub.publish(t, Message(f"{key}:{n}".encode()), key=key)
        await eventually(lambda: len(seen) >= 100, 30, "delivery of 100 keyed messages")
        per_key: dict[bytes | None, list[int]] = defaultdict(list)
        partitions: dict[bytes | None, set[int]] = defaultdict(set)
        for d in seen:
            per_key[d.key].append(int(d.message.body.split(b":")[1]))
            partitions[d.key].add(d.partition)
        assert set(per_key) == {b"red", b"green", b"blue"}
        for key, numbers in per_key.items():
            assert numbers == sorted(numbers), f"key {key!r} out of order"
            assert len(partitions[key]) == 1, f"key {key!r} spread over partitions"


async def test_batching_producer_flushes_on_disconnect(kafka_server: KafkaServer) -> None:
    t = topic()
    async with KafkaBroker(kafka_server.address, **FAST) as sub:
        seen: list[bytes] = []

        async def handler(delivery: Delivery) -> None:
            seen.append(delivery.message.body)

        await sub.subscribe(t, handler)
        pub = KafkaBroker(kafka_server.address, linger=2.0, confirm=False, **FAST)
        await pub.connect()
        for n in range(200):
            await pub.publish(t, Message(str(n).encode()))
        await pub.disconnect()  # within the linger: only the flush on disconnect sends them
        await eventually(lambda: len(seen) >= 200, 30, "delivery of the lingering batch")
        assert sorted(seen, key=int) == [str(n).encode() for n in range(200)]


@pytest.mark.parametrize("how", ["nack", "raise"])
async def test_committed_offset_never_passes_an_unacked_message(
    kafka_server: KafkaServer, kafka_client: str, how: str
) -> None:
    """go-micro's kafka plugin commits past a failed message and loses it; this one must not."""
    t, group = topic(), f"g-{uuid.uuid4().hex[:8]}"
    first: list[bytes] = []
    async with (
        KafkaBroker(kafka_server.address, client=kafka_client, **FAST) as pub,
        KafkaBroker(kafka_server.address, client=kafka_client, **FAST) as sub,
    ):

        async def failing(delivery: Delivery) -> None:
            first.append(delivery.message.body)
            if delivery.message.body == b"3":
                if how == "raise":
                    raise RuntimeError("deliberate failure")
                await delivery.nack()

        # Never given up within the test: only the committed offset is looked at here
        # (test_kafka_retry.py has the give-up).
        patient = RetryPolicy(max_attempts=10_000, backoff=0.01, max_backoff=0.2)
        subscription = await sub.subscribe(t, failing, queue=group, retry=patient)
        for n in range(10):
            await pub.publish(t, Message(str(n).encode()))
        await eventually(
            lambda: first.count(b"3") >= 3 and len(set(first)) == 10, 30, "redelivery of message 3"
        )
        assert set(first) == {str(n).encode() for n in range(10)}
        await asyncio.sleep(0.5)  # several commit intervals
        await subscription.unsubscribe()
        assert await committed_offsets(kafka_server.address, group, t) == {0: 3}

        # The next member of the group starts at message 3: nothing was lost.
        again: list[bytes] = []

        async def fine(delivery: Delivery) -> None:
            again.append(delivery.message.body)

        await sub.subscribe(t, fine, queue=group)
        await eventually(lambda: len(again) >= 7, 30, "redelivery to the next member")
        assert again == [str(n).encode() for n in range(3, 10)]
        await asyncio.sleep(0.3)
        assert await committed_offsets(kafka_server.address, group, t) == {0: 10}


async def test_manual_ack_out_of_order_commits_only_the_acked_prefix(
    kafka_server: KafkaServer,
    kafka_client: str,
) -> None:
    t, group = topic(), f"g-{uuid.uuid4().hex[:8]}"
    held: list[Delivery] = []
    async with (
        KafkaBroker(kafka_server.address, client=kafka_client, **FAST) as pub,
        KafkaBroker(kafka_server.address, client=kafka_client, **FAST) as sub,
    ):

        async def keep(delivery: Delivery) -> None:
            held.append(delivery)

        await sub.subscribe(t, keep, queue=group, auto_ack=False)
        for n in range(6):
            await pub.publish(t, Message(str(n).encode()))
        await eventually(lambda: len(held) >= 6, 30, "delivery of 6 messages")
        for d in (held[0], held[1], held[3], held[4], held[5]):
            await d.ack()
        await asyncio.sleep(0.4)
        assert await committed_offsets(kafka_server.address, group, t) == {0: 2}
        await held[2].ack()
        await asyncio.sleep(0.4)
        assert await committed_offsets(kafka_server.address, group, t) == {0: 6}


async def test_a_member_killed_mid_batch_loses_nothing(
    kafka_server: KafkaServer, kafka_client: str, tmp_path: Path
) -> None:
    """A group member is SIGKILLed while handling; the group's next member gets the rest."""
    t, group = topic(), f"g-{uuid.uuid4().hex[:8]}"
    out = tmp_path / "handled.txt"
    out.touch()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent)])}
    child = subprocess.Popen(  # noqa: ASYNC220 - a child to SIGKILL, waited on in a thread
        [
            sys.executable,
            str(HERE / "crash_consumer.py"),
            kafka_server.address,
            t,
            group,
            str(out),
            kafka_client,
        ],
        stdout=subprocess.PIPE,
        env=env,
    )
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(child.stdout.readline), 60)
        assert line.strip() == b"subscribed", line
        total = 500
        async with KafkaBroker(
            kafka_server.address, client=kafka_client, **{**FAST, "partitions": 2}
        ) as pub:
            for n in range(total):
                await pub.publish(t, Message(str(n).encode()), key=str(n))

            def handled_by_child() -> list[str]:
                return out.read_text().split()

            await eventually(lambda: len(handled_by_child()) >= 100, 60, "the child at work")
            child.send_signal(signal.SIGKILL)
            child.wait()
            before = handled_by_child()
            assert len(before) < total, "the child finished before it was killed"

            taken: list[str] = []

            async def handler(delivery: Delivery) -> None:
                taken.append(delivery.message.body.decode())

            async with KafkaBroker(
                kafka_server.address, client=kafka_client, **{**FAST, "partitions": 2}
            ) as heir:
                await heir.subscribe(t, handler, queue=group)
                expected = {str(n) for n in range(total)}
                try:
                    await eventually(
                        lambda: expected <= set(before) | set(taken), 60, "the takeover"
                    )
                except AssertionError:
                    missing = sorted(expected - set(before) - set(taken), key=int)
                    raise AssertionError(
                        f"{len(missing)} never handled (first {missing[:10]}); the killed "
                        f"member handled {len(before)}, its heir {len(taken)}"
                    ) from None
        duplicates = len(before) + len(taken) - total
        print(f"\nkilled member handled {len(before)}, heir {len(taken)}, duplicates {duplicates}")
        assert expected == set(before) | set(taken)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


async def test_records_from_other_producers_reach_typed_subscribers(
    kafka_server: KafkaServer,
) -> None:
    """Headers are read lazily: Content-Type in any case, non-UTF-8 values, none at all."""
    t = topic()
    got: list[tuple[object, str | None, dict[str, str]]] = []
    service = microbroker.Service("kafka-typed", broker=KafkaBroker(kafka_server.address, **FAST))

    @service.subscriber(t)
    async def on(value: dict[str, int], ctx: microbroker.Context) -> None:
        got.append((value, ctx.content_type, ctx.metadata.to_headers()))

    producer = AIOKafkaProducer(bootstrap_servers=kafka_server.address)
    async with service:
        await producer.start()
        try:
            records = [
                (b'{"n":1}', [("Content-Type", b"application/json")]),
                (b'{"n":2}', [("content-type", b"application/json")]),
                (b'{"n":3}', [("X-Raw", b"\xff\xfe"), ("Content-Type", b"application/json")]),
                (b'{"n":4}', None),
            ]
            for value, headers in records:
                await producer.send_and_wait(t, value, headers=headers, partition=0)
        finally:
            await producer.stop()
        await eventually(lambda: len(got) == 4, 60, "four typed deliveries")
    assert [value for value, _, _ in got] == [{"n": 1}, {"n": 2}, {"n": 3}, {"n": 4}]
    assert [content_type for _, content_type, _ in got] == ["application/json"] * 3 + [None]
    assert got[2][2] == {"X-Raw": "\ufffd\ufffd", "Content-Type": "application/json"}
    assert got[1][2] == {"content-type": "application/json"}


async def test_records_fetched_while_a_partition_is_being_assigned_are_not_skipped(
    kafka_server: KafkaServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The assignment callback awaits the server; aiokafka may hand out records meanwhile.

    Here the callback's ListOffsets answer is held back for a second, long
    enough for the consumer to fetch the ten records already in the topic.
    Those records were skipped (the consumer's position had moved past them
    before the partition was registered) until they were fetched again.
    """
    from aiokafka import AIOKafkaConsumer

    end_offsets = AIOKafkaConsumer.end_offsets

    async def slow_end_offsets(self: AIOKafkaConsumer, partitions: Any) -> Any:
        ends = await end_offsets(self, partitions)
        await asyncio.sleep(1.0)
        return ends

    monkeypatch.setattr(AIOKafkaConsumer, "end_offsets", slow_end_offsets)
    name, group = topic(), f"g-{uuid.uuid4().hex[:8]}"
    received: list[bytes] = []
    async with (
        KafkaBroker(kafka_server.address, **FAST) as pub,
        KafkaBroker(kafka_server.address, **FAST) as sub,
    ):
        for n in range(10):
            await pub.publish(name, Message(b"%d" % n))

        async def handler(delivery: Delivery) -> None:
            received.append(delivery.message.body)

        await sub.subscribe(name, handler, queue=group)
        await eventually(lambda: len(received) >= 10, 30, "delivery of the ten")
        await asyncio.sleep(0.5)
    assert received == [b"%d" % n for n in range(10)]


async def test_a_group_joins_with_a_request_timeout_below_its_rebalance_timeout(
    kafka_server: KafkaServer,
) -> None:
    """The server answers a JoinGroup only once the group settles, up to rebalance_timeout.

    With aiokafka's single request timeout below that, every JoinGroup timed
    out and subscribe() failed after join_timeout ("assigned no partition").
    """
    name, group = topic(), f"g-{uuid.uuid4().hex[:8]}"
    received: list[bytes] = []
    options = {**FAST, "request_timeout": 1.0, "rebalance_timeout": 3.0, "join_timeout": 20.0}
    async with KafkaBroker(kafka_server.address, **options) as broker:

        async def handler(delivery: Delivery) -> None:
            received.append(delivery.message.body)

        await broker.subscribe(name, handler, queue=group)
        await broker.publish(name, Message(b"joined"))
        await eventually(lambda: received == [b"joined"], 20, "delivery")


async def test_a_coordinator_lost_while_a_group_is_assigned_does_not_stall_it(
    kafka_server: KafkaServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The coordinator answers the first committed-offset lookup "not coordinator" (it moved).

    aiokafka then waits for a position until its group coordination finds the
    coordinator again, and that coordination waits for the assignment callback,
    which asked for the position: subscribe() failed after join_timeout and
    close() never returned. The callback now gives a position up after
    request_timeout and places the partition by its first fetched record.
    """
    from aiokafka import errors as kafka_errors
    from aiokafka.consumer.group_coordinator import GroupCoordinator

    fetch_committed = GroupCoordinator._do_fetch_commit_offsets
    refused: list[object] = []

    async def moved_once(self: GroupCoordinator, partitions: Any) -> Any:
        if not refused:
            refused.append(partitions)
            self.coordinator_dead()
            raise kafka_errors.NotCoordinatorForGroupError()
        return await fetch_committed(self, partitions)

    monkeypatch.setattr(GroupCoordinator, "_do_fetch_commit_offsets", moved_once)
    name, group = topic(), f"g-{uuid.uuid4().hex[:8]}"
    received: list[bytes] = []

    async def handler(delivery: Delivery) -> None:
        received.append(delivery.message.body)

    options = {**FAST, "request_timeout": 2.0, "join_timeout": 20.0}
    async with KafkaBroker(kafka_server.address, **options) as broker:
        await asyncio.wait_for(broker.subscribe(name, handler, queue=group), 30)
        assert refused, "the fault was not injected"
        for n in range(5):
            await broker.publish(name, Message(b"%d" % n))
        await eventually(lambda: len(received) >= 5, 30, "delivery after the coordinator moved")
        await asyncio.sleep(0.3)
        assert received == [b"%d" % n for n in range(5)]
        # What it handled is committed: the partition is the subscriber's like any other.
        await asyncio.sleep(0.5)
    committed = await committed_offsets(kafka_server.address, group, name)
    assert sum(offset or 0 for offset in committed.values()) == 5


async def test_a_broadcast_subscriber_whose_log_end_cannot_be_read_fails_clearly(
    kafka_server: KafkaServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A log-end lookup the server keeps refusing: aiokafka retries it for ever.

    subscribe() hung (and with it the test or the service starting up); it now
    fails with a SubscribeError after join_timeout, and the broker goes on.
    """
    from aiokafka import errors as kafka_errors
    from aiokafka.consumer.fetcher import Fetcher

    async def refused(self: Fetcher, node_id: int, topic_data: Any) -> Any:
        await asyncio.sleep(0.05)
        raise kafka_errors.NotLeaderForPartitionError()

    name = topic()
    async with KafkaBroker(kafka_server.address, **{**FAST, "join_timeout": 3.0}) as broker:
        await broker.publish(name, Message(b"topic made"))
        with monkeypatch.context() as patch:
            patch.setattr(Fetcher, "_proc_offset_request", refused)
            with pytest.raises(SubscribeError) as info:
                await asyncio.wait_for(broker.subscribe(name, lambda d: None), 20)
        assert f"could not learn where the log of {name!r} ends" in str(info.value)
        assert "within 3.0s" in str(info.value)
        received: list[bytes] = []

        async def handler(delivery: Delivery) -> None:
            received.append(delivery.body)

        await broker.subscribe(name, handler)
        await broker.publish(name, Message(b"after"))
        await eventually(lambda: received == [b"after"], 20, "delivery once the server answers")
