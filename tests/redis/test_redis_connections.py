"""One broker with more subscriptions than redis-py's default pool of 100 connections."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from microbroker_redis import RedisBroker
from support.eventually import eventually
from support.redis_server import RedisServer

import microbroker


async def test_a_broker_with_120_subscriptions_delivers_and_acks_on_each(
    redis_server: RedisServer,
) -> None:
    # Each Streams subscription holds a connection for its blocking read: with redis-py's
    # default bound of 100, the acks of the later ones failed (MaxConnectionsError).
    count = 120
    got: set[str] = set()

    async def handler(delivery: microbroker.Delivery) -> None:
        got.add(delivery.topic)

    async with RedisBroker(redis_server.url) as broker:
        topics = [f"pool.{i}" for i in range(count)]
        for topic in topics:
            await broker.subscribe(topic, handler, queue="members")
        for topic in topics:
            await broker.publish(topic, microbroker.Message(b"x"))
        await eventually(lambda: len(got) == count, f"a delivery on each of {count} topics")
        # Every entry was acked: nothing is left pending in any group.
        check = aioredis.Redis.from_url(redis_server.url)
        try:
            for _ in range(2000):  # up to ~20 s: the acks go out in batches, after delivery
                found = [(await check.xpending(t, "members"))["pending"] for t in topics]
                if found == [0] * count:
                    break
                await asyncio.sleep(0.01)
            assert found == [0] * count, "an ack failed: entries are left pending"
        finally:
            await check.aclose()
