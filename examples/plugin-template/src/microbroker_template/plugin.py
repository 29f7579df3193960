"""The hook implementations: what microbroker finds through the entry point."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import microbroker


@microbroker.hookimpl
def register_brokers(register: Callable[[str, Callable[..., Any]], None]) -> None:
    # Import inside the hook: listing plugins should not import every transport's client.
    from .broker import TemplateBroker

    register("template", TemplateBroker)
