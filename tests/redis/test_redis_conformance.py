"""The conformance suite against a stock redis-server, in each mode, with default options."""

from __future__ import annotations

import pytest
from microbroker_redis import RedisBroker
from support.redis_server import RedisServer

from microbroker.conformance import BrokerConformance, BrokerFactory, RestartServer


class TestRedisStreams(BrokerConformance):
    """The default: Streams with consumer groups (XADD, XREADGROUP, XACK, XAUTOCLAIM)."""

    @pytest.fixture
    def broker_factory(self, redis_server: RedisServer) -> BrokerFactory:
        return lambda: RedisBroker(redis_server.url)

    @pytest.fixture
    def restart_server(self, redis_server: RedisServer) -> RestartServer:
        return redis_server.restart


class TestRedisPubSub(BrokerConformance):
    """``mode="pubsub"``: PUBLISH/SUBSCRIBE and the envelope, at most once."""

    @pytest.fixture
    def broker_factory(self, redis_server: RedisServer) -> BrokerFactory:
        return lambda: RedisBroker(redis_server.url, mode="pubsub")

    @pytest.fixture
    def restart_server(self, redis_server: RedisServer) -> RestartServer:
        return redis_server.restart
