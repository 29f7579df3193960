"""The broker's options, with their defaults in one place."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TemplateOptions:
    """Options of the template broker (a real plugin has its TLS, auth, timeouts... here)."""

    redelivery_delay: float = 0.01
    """Seconds before a nacked message is delivered again."""
