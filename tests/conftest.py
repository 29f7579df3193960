"""Shared fixtures for every distribution's tests. Server fixtures live in ``support/``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support.watchdog import stacks_before_timeout


@pytest.fixture(autouse=True)
def _stacks_of_a_hang(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test that hangs prints where each of its asyncio tasks waits before it is stopped.

    pytest-timeout shows only the event loop's ``select()``, which says nothing
    about which await never returned; CI's log then has this instead.
    """
    marker = request.node.get_closest_marker("timeout")
    if marker and marker.args:
        limit = marker.args[0]
    else:
        limit = request.config.getoption("timeout", None) or request.config.getini("timeout")
    with stacks_before_timeout(float(limit or 0), request.node.nodeid):
        yield
