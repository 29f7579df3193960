"""What a message is on the server, read and written by a plain redis-py client."""

from __future__ import annotations

import json

import redis.asyncio as aioredis
from microbroker_redis import RedisBroker
from support.eventually import eventually
from support.redis_server import RedisServer

import microbroker


async def test_a_stream_entry_is_a_field_per_header_and_the_body_in_its_own_field(
    redis_server: RedisServer,
) -> None:
    got: list[microbroker.Message] = []

    async def handler(delivery: microbroker.Delivery) -> None:
        got.append(delivery.message)

    raw = aioredis.Redis.from_url(redis_server.url)
    try:
        async with RedisBroker(redis_server.url) as broker:
            await broker.subscribe("wire.streams", handler, queue="readers")
            await broker.publish(
                "wire.streams", microbroker.Message(b'{"id": 1}', {"Content-Type": "x/y"})
            )
            [(_, fields)] = await raw.xrange("wire.streams", count=1)
            assert fields[b":body"] == b'{"id": 1}'
            assert fields[b"Content-Type"] == b"x/y"
            # Another client's XADD, with the same fields, is a message like any other.
            await raw.xadd("wire.streams", {":body": b"from redis-cli", "Tenant": "a"})
            await eventually(lambda: len(got) == 2, "both entries delivered")
        assert got[1].body == b"from redis-cli"
        assert got[1].headers["Tenant"] == "a"
    finally:
        await raw.aclose()


async def test_pubsub_speaks_the_envelope_and_takes_a_plain_payload_as_the_body(
    redis_server: RedisServer,
) -> None:
    got: list[microbroker.Message] = []

    async def handler(delivery: microbroker.Delivery) -> None:
        got.append(delivery.message)

    raw = aioredis.Redis.from_url(redis_server.url)
    listener = raw.pubsub()
    try:
        await listener.subscribe("wire.pubsub")
        async with RedisBroker(redis_server.url, mode="pubsub") as broker:
            await broker.subscribe("wire.pubsub", handler)
            await broker.publish("wire.pubsub", microbroker.Message(b"\x00\xff", {"Tenant": "a"}))
            seen = None
            while seen is None or seen["type"] != "message":
                seen = await listener.get_message(timeout=5.0)
                assert seen is not None, "the envelope did not reach a plain subscriber"
            envelope = json.loads(seen["data"])
            assert envelope["Body"] == "AP8="  # base64 of the body
            assert envelope["Header"]["Tenant"] == "a"
            await raw.publish("wire.pubsub", b"not an envelope")
            await eventually(lambda: len(got) == 2, "both messages delivered")
        assert got[0].body == b"\x00\xff"
        assert got[0].headers.get("Tenant") == "a"
        assert "Micro-Redis-Claim" not in got[0].headers
        assert got[1].body == b"not an envelope"
        assert dict(got[1].headers) == {}
    finally:
        await listener.aclose()
        await raw.aclose()
