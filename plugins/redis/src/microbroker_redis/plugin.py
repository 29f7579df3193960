"""The plugin module named by the ``microbroker`` entry point: it registers ``redis``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from microbroker import hookimpl

MICROBROKER_API = ">=1.0,<2"  # the plugin API versions this plugin is written for


@hookimpl
def register_brokers(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Offer the ``redis`` broker (``MICRO_BROKER=redis``)."""
    # Imported in the hook: listing plugins does not import redis-py.
    from .broker import RedisBroker

    register("redis", RedisBroker)
