"""The suite bound to the broker named on the command line (``--microbroker-broker``).

Collected explicitly by ``python -m microbroker.conformance`` or
``pytest --pyargs microbroker.conformance.run``.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from .._broker import Broker
from .._selection import get_broker
from ._harness import BrokerFactory, RestartServer
from ._suite import BrokerConformance


def _options(config: pytest.Config) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for item in config.getoption("--microbroker-option") or []:
        key, sep, raw = item.partition("=")
        if not sep:
            raise pytest.UsageError(f"--option takes KEY=VALUE, not {item!r}")
        try:
            options[key] = json.loads(raw)
        except ValueError:
            options[key] = raw
    return options


class TestConformance(BrokerConformance):
    @pytest.fixture
    def broker_factory(self, pytestconfig: pytest.Config) -> BrokerFactory:
        name = pytestconfig.getoption("--microbroker-broker")
        if not name:
            raise pytest.UsageError("name the broker to test: --microbroker-broker NAME")
        address = pytestconfig.getoption("--microbroker-address")
        options = _options(pytestconfig)
        if address:
            options["address"] = address

        def factory() -> Broker:
            return get_broker(name, **options)

        return factory

    @pytest.fixture
    def restart_server(self, pytestconfig: pytest.Config) -> RestartServer | None:
        command = pytestconfig.getoption("--microbroker-restart-command")
        if not command:
            return None

        def restart() -> None:
            subprocess.run(command, shell=True, check=True, timeout=120)

        return restart
