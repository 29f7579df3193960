"""TLS (``rediss://``) and ACL users (``redis://user:password@host:port``) on a real redis-server.

The TLS server's certificate is issued for 127.0.0.1 by a CA made for it
(``support.certificates``, as the NATS and RabbitMQ tests make theirs); the ACL
user of the address is in the server's config, and the test creates a second
one, limited to some keys, with ``ACL SETUSER``. Each refusal is checked for
its exception and for a message that says what to give, without the password.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis.asyncio as aioredis
from microbroker_redis import RedisAuthError, RedisBroker, RedisConnectError
from support.eventually import eventually
from support.process import HOST
from support.redis_server import RedisServer

import microbroker
from microbroker import PublishError

SECRET = "s3cr:t/@x"  # characters an address must percent-encode


async def _round_trip(broker: RedisBroker, topic: str) -> None:
    got: list[bytes] = []

    async def handler(delivery: microbroker.Delivery) -> None:
        got.append(delivery.message.body)

    sub = await broker.subscribe(topic, handler)
    try:
        await broker.publish(topic, microbroker.Message(b"hello"))
        await eventually(lambda: got == [b"hello"], f"the message on {topic!r} delivered")
    finally:
        await sub.unsubscribe()


@pytest.mark.parametrize("mode", ["streams", "pubsub"])
async def test_rediss_with_the_servers_ca_carries_messages(
    new_redis_server: Callable[..., RedisServer], mode: str
) -> None:
    server = new_redis_server(name="tls", tls=True)
    assert server.tls_url.startswith("rediss://")
    async with RedisBroker(server.tls_url, tls_ca_file=str(server.ca_file), mode=mode) as broker:
        await _round_trip(broker, f"tls.{mode}")
        raw = aioredis.Redis(host=HOST, port=server.port)
        try:
            clients = (await raw.execute_command("CLIENT", "LIST")).decode()
        finally:
            await raw.aclose()
        # The broker's connections are on the TLS port (the plain one has only `raw`).
        assert clients.count(f"laddr={HOST}:{server.tls_port}") >= 1, clients


async def test_rediss_without_the_ca_is_refused_clearly(
    new_redis_server: Callable[..., RedisServer],
) -> None:
    server = new_redis_server(name="tls-untrusted", tls=True)
    with pytest.raises(RedisConnectError) as untrusted:
        await RedisBroker(server.tls_url, connect_timeout=5.0).connect()
    text = str(untrusted.value)
    print(f"\nno CA: {type(untrusted.value).__name__}: {text}")
    assert "does not trust" in text
    assert "tls_ca_file=" in text
    assert isinstance(untrusted.value, microbroker.MicrobrokerError)
    # Not verifying (tests only) connects.
    async with RedisBroker(server.tls_url, tls_verify=False) as broker:
        await _round_trip(broker, "tls.unverified")


async def test_rediss_to_the_plain_port_is_refused_clearly(
    new_redis_server: Callable[..., RedisServer],
) -> None:
    server = new_redis_server(name="tls-plain-port", tls=True)
    plain_port = f"rediss://{HOST}:{server.port}"
    broker = RedisBroker(plain_port, tls_ca_file=str(server.ca_file), connect_timeout=2.0)
    with pytest.raises(RedisConnectError) as refused:
        await broker.connect()
    print(f"\nrediss:// to the plain port: {type(refused.value).__name__}: {refused.value}")
    assert "TLS port" in str(refused.value)


async def test_an_acl_user_in_the_address_connects_and_a_wrong_password_is_refused(
    new_redis_server: Callable[..., RedisServer],
) -> None:
    server = new_redis_server(name="acl", user="app", password=SECRET)
    assert "s3cr%3At%2F%40x" in server.url  # the fixture percent-encodes it
    async with RedisBroker(server.url) as broker:
        await _round_trip(broker, "acl.address")
    plain = f"redis://{HOST}:{server.port}"
    async with RedisBroker(plain, username="app", password=SECRET) as broker:
        await _round_trip(broker, "acl.options")

    with pytest.raises(RedisAuthError) as wrong:
        await RedisBroker(f"redis://app:not-{SECRET[:4]}@{HOST}:{server.port}").connect()
    text = str(wrong.value)
    print(f"\nwrong password: {type(wrong.value).__name__}: {text}")
    assert "refused the password of the user 'app'" in text
    assert "not-s3cr" not in text, "an error message must not show the password"
    assert isinstance(wrong.value, RedisConnectError)
    assert isinstance(wrong.value, ConnectionError)

    with pytest.raises(RedisAuthError) as missing:
        await RedisBroker(plain).connect()
    print(f"no password: {type(missing.value).__name__}: {missing.value}")
    assert "wants a password" in str(missing.value)


async def test_a_user_limited_to_some_keys_gets_a_clear_publish_error(
    new_redis_server: Callable[..., RedisServer],
) -> None:
    server = new_redis_server(name="acl-limited", user="admin", password=SECRET)
    admin = aioredis.Redis.from_url(server.url)
    try:
        await admin.execute_command(
            "ACL", "SETUSER", "orders-only", "on", ">pw-1", "~orders.*", "&*", "+@all"
        )
    finally:
        await admin.aclose()
    async with RedisBroker(f"redis://orders-only:pw-1@{HOST}:{server.port}") as broker:
        await _round_trip(broker, "orders.created")
        with pytest.raises(PublishError) as refused:
            await broker.publish("payments.made", microbroker.Message(b"x"))
        print(f"\nno permission: {type(refused.value).__name__}: {refused.value}")
        assert "NOPERM" in str(refused.value) or "permission" in str(refused.value).lower()
        assert "'payments.made'" in str(refused.value)
        # The broker goes on.
        await _round_trip(broker, "orders.again")
