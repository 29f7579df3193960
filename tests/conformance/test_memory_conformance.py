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
