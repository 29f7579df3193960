"""The http broker passes the conformance suite, brokers of a case sharing one registry."""

from __future__ import annotations

import itertools

import pytest

import microbroker
from microbroker.conformance import BrokerConformance
from microbroker.registries.memory import MemoryRegistry

_addresses = itertools.count()


class TestHttpConformance(BrokerConformance):
    @pytest.fixture
    def broker_factory(self) -> microbroker.conformance.BrokerFactory:
        address = f"http-conformance-{next(_addresses)}"
        return lambda: microbroker.get_broker("http", registry=MemoryRegistry(address))
