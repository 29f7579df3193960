"""Processes talking over the http broker: broadcast, queue groups, kill -9, early publishers."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from support.http_procs import Peer

import microbroker


async def _publish(broker: microbroker.Broker, topic: str, bodies: range) -> None:
    for i in bodies:
        await broker.publish(topic, microbroker.Message(str(i).encode()))


async def test_broadcast_reaches_every_subscriber_process(
    peer: Callable[..., Peer], make_broker: Callable[..., Any]
) -> None:
    subs = [peer("sub", "news") for _ in range(3)]
    for s in subs:
        s.wait_line("ready")
    pub = await make_broker()
    await _publish(pub, "news", range(100))
    for s in subs:
        await asyncio.to_thread(s.wait_deliveries, 100)
    for s in subs:
        assert s.bodies() == [str(i) for i in range(100)], "each gets all, in publish order"


async def test_queue_group_splits_messages_between_three_processes(
    peer: Callable[..., Peer], make_broker: Callable[..., Any]
) -> None:
    members = [peer("sub", "jobs", "--queue", "workers") for _ in range(3)]
    for m in members:
        m.wait_line("ready")
    pub = await make_broker()
    await _publish(pub, "jobs", range(300))
    await asyncio.to_thread(
        members[0].wait_for,
        lambda _: sum(len(m.deliveries) for m in members) >= 300,
        30,
        "300 deliveries in the group",
    )
    await asyncio.sleep(0.3)  # room for a wrong duplicate to show up
    seen = Counter(b for m in members for b in m.bodies())
    assert set(seen) == {str(i) for i in range(300)}
    assert max(seen.values()) == 1, "a message went to more than one member"
    assert all(m.deliveries for m in members), "every member of the group gets a share"


async def test_a_group_member_killed_mid_stream_loses_nothing(
    peer: Callable[..., Peer], make_broker: Callable[..., Any]
) -> None:
    victim = peer("sub", "orders", "--queue", "billing", "--delay", "0.01")
    survivor = peer("sub", "orders", "--queue", "billing", "--delay", "0.01")
    victim.wait_line("ready")
    survivor.wait_line("ready")
    pub = await make_broker()
    publishing = asyncio.create_task(_publish(pub, "orders", range(400)))
    await asyncio.to_thread(victim.wait_deliveries, 20)
    victim.kill()
    await publishing
    expected = {str(i) for i in range(400)}

    def complete(_: list[str]) -> bool:
        return set(victim.bodies()) | set(survivor.bodies()) >= expected

    await asyncio.to_thread(survivor.wait_for, complete, 60, "every message delivered")
    assert set(survivor.bodies()) - set(victim.bodies()), "the survivor took over"


async def test_a_killed_broadcast_subscriber_does_not_block_the_others(
    peer: Callable[..., Peer], make_broker: Callable[..., Any]
) -> None:
    victim = peer("sub", "ticks")
    other = peer("sub", "ticks")
    victim.wait_line("ready")
    other.wait_line("ready")
    pub = await make_broker()
    await _publish(pub, "ticks", range(50))
    await asyncio.to_thread(victim.wait_deliveries, 50)
    victim.kill()
    await _publish(pub, "ticks", range(50, 100))
    await asyncio.to_thread(other.wait_deliveries, 100)
    assert other.bodies() == [str(i) for i in range(100)]


async def test_a_publisher_that_starts_before_any_subscriber(
    peer: Callable[..., Peer],
) -> None:
    publisher = peer("pub", "early", "50", "--wait")
    # The publisher runs, and is told that nobody listens yet, before the subscriber exists.
    publisher.wait_line("no-subscriber")
    subscriber = peer("sub", "early")
    subscriber.wait_line("ready")
    publisher.wait_line("done")
    assert publisher.wait() == 0, publisher.stderr
    subscriber.wait_deliveries(50)
    assert subscriber.bodies() == [str(i) for i in range(50)]


async def test_publish_with_no_subscriber_is_an_error(make_broker: Callable[..., Any]) -> None:
    pub = await make_broker()
    with pytest.raises(microbroker.PublishError, match="no subscriber"):
        await pub.publish("nobody-listens", microbroker.Message(b"x"))


async def test_the_only_subscriber_killed_and_restarted_mid_stream(
    peer: Callable[..., Peer], make_broker: Callable[..., Any]
) -> None:
    """kill -9 of the group's only process, a new one started: every accepted message arrives.

    A publish either raises (nobody could take it) or its message reaches the
    group; messages the killed process had not answered are retried to the new one.
    """
    victim = peer("sub", "invoices", "--queue", "billing", "--delay", "0.005")
    victim.wait_line("ready")
    pub = await make_broker()
    accepted: list[str] = []
    refused: list[str] = []

    async def publish(bodies: range) -> None:
        for i in bodies:
            try:
                await pub.publish("invoices", microbroker.Message(str(i).encode()))
            except microbroker.PublishError:
                refused.append(str(i))
            else:
                accepted.append(str(i))

    await publish(range(100))
    await asyncio.to_thread(victim.wait_deliveries, 20)
    victim.kill()
    publishing = asyncio.create_task(publish(range(100, 300)))
    replacement = peer("sub", "invoices", "--queue", "billing", "--delay", "0.005")
    replacement.wait_line("ready")
    await publishing
    await publish(range(300, 400))

    def complete(_: list[str]) -> bool:
        return set(victim.bodies()) | set(replacement.bodies()) >= set(accepted)

    await asyncio.to_thread(replacement.wait_for, complete, 60, "every accepted message delivered")
    assert len(accepted) >= 300, f"too many publishes refused: {len(refused)}"
    assert set(replacement.bodies()) >= {str(i) for i in range(300, 400)}
