"""The whole conformance suite against the template broker: copy this file as it is."""

from __future__ import annotations

import pytest

import microbroker
from microbroker.conformance import BrokerConformance, BrokerFactory


class TestTemplateConformance(BrokerConformance):
    @pytest.fixture
    def broker_factory(self) -> BrokerFactory:
        # Select the broker by name, as users will: this proves the entry point too.
        return lambda: microbroker.get_broker("template")


def test_the_broker_is_found_through_its_entry_point() -> None:
    info = microbroker.available_brokers()["template"]
    assert info.distribution == "microbroker-template"
    assert info.version == "0.1.0"
