"""The reference broker passes the suite, run the way a plugin author runs it."""

from __future__ import annotations

import itertools

import pytest

import microbroker
from microbroker.conformance import BrokerConformance

_addresses = itertools.count()


class TestMemoryConformance(BrokerConformance):
    @pytest.fixture
    def broker_factory(self) -> microbroker.conformance.BrokerFactory:
        # One bus per case, shared by the brokers of that case (as one server would be).
        address = f"conformance-{next(_addresses)}"
        return lambda: microbroker.get_broker("memory", address=address)


class TestSmallMessagesConformance(BrokerConformance):
    """A broker that carries only small messages (4 KiB, as PostgreSQL's NOTIFY nearly does)
    passes the suite honestly: the suite sends nothing larger than the broker declares."""

    @pytest.fixture
    def broker_factory(self) -> microbroker.conformance.BrokerFactory:
        address = f"conformance-small-{next(_addresses)}"
        return lambda: microbroker.get_broker("memory", address=address, max_message_size=4096)


class TestSmallestMessagesConformance(BrokerConformance):
    """At the smallest limit the suite accepts (MIN_MESSAGE_SIZE) every case still fits."""

    @pytest.fixture
    def broker_factory(self) -> microbroker.conformance.BrokerFactory:
        from microbroker.conformance import MIN_MESSAGE_SIZE

        address = f"conformance-smallest-{next(_addresses)}"
        return lambda: microbroker.get_broker(
            "memory", address=address, max_message_size=MIN_MESSAGE_SIZE
        )


class TestSmallestHeadersConformance(BrokerConformance):
    """At the smallest header limits the suite accepts (MIN_HEADERS, MIN_HEADER_BYTES) every
    case still fits, and the header-limit case holds the broker to them."""

    @pytest.fixture
    def broker_factory(self) -> microbroker.conformance.BrokerFactory:
        from microbroker.conformance import MIN_HEADER_BYTES, MIN_HEADERS

        address = f"conformance-small-headers-{next(_addresses)}"
        return lambda: microbroker.get_broker(
            "memory",
            address=address,
            max_headers=MIN_HEADERS,
            max_header_bytes=MIN_HEADER_BYTES,
        )
