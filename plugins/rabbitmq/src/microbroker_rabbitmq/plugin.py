"""The plugin module named by the ``microbroker`` entry point: it registers ``rabbitmq``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from microbroker import hookimpl

MICROBROKER_API = ">=1.0,<2"  # the plugin API versions this plugin is written for


@hookimpl
def register_brokers(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Offer the ``rabbitmq`` broker (``MICRO_BROKER=rabbitmq``)."""
    # Imported in the hook: listing plugins does not import aiormq.
    from .broker import RabbitMQBroker

    register("rabbitmq", RabbitMQBroker)
