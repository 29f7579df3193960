"""The module the ``microbroker`` entry point names: it registers the ``mdns`` registry."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from microbroker import hookimpl

MICROBROKER_API = ">=1.0,<2"  # the plugin API versions this plugin is written for


@hookimpl
def register_registries(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Offer the ``mdns`` registry (``MICRO_REGISTRY=mdns``)."""
    from .registry import MdnsRegistry

    register("mdns", MdnsRegistry)
