"""The hook implementations: what microbroker finds through the entry point."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import microbroker

# The plugin API versions this plugin is written for (microbroker.transport.API_VERSION is the
# core's). Keep it a string literal: the core reads it from this file before importing anything
# of the plugin, and refuses a plugin whose range it is not in, saying which side to upgrade.
MICROBROKER_API = ">=1.0,<2"


@microbroker.hookimpl
def register_brokers(register: Callable[[str, Callable[..., Any]], None]) -> None:
    # Import inside the hook: listing plugins should not import every transport's client.
    from .broker import TemplateBroker

    register("template", TemplateBroker)
