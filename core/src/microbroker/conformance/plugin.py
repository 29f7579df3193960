"""The pytest plugin (entry point ``pytest11``): the ``microbroker_test`` fixture, and the
options that point the conformance suite at a broker.

``pytest --pyargs microbroker.conformance.run --microbroker-broker NAME`` runs
the suite against an installed broker; ``python -m microbroker.conformance``
does the same with shorter options. Loading this plugin costs one option group
and one fixture.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture
def microbroker_test() -> Iterator[Any]:
    """``microbroker.testing.run``, for a test: ``async with microbroker_test.run(service) as t``.

    Fails the test when a run it started did not end.
    """
    from ..testing import TestSession

    session = TestSession()
    yield session
    session.check()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("microbroker", "microbroker broker conformance")
    group.addoption(
        "--microbroker-broker",
        metavar="NAME",
        help="the installed broker to run the conformance suite against",
    )
    group.addoption(
        "--microbroker-address",
        metavar="ADDR",
        help="the broker's address (default: the broker's own default)",
    )
    group.addoption(
        "--microbroker-restart-command",
        metavar="CMD",
        help="a shell command that restarts the server, for the restart cases",
    )
    group.addoption(
        "--microbroker-option",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="a broker option (repeatable); VALUE is parsed as JSON when it can be",
    )
