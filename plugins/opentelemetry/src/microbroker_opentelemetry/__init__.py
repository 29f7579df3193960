"""OpenTelemetry for microbroker: traces and metrics of every publish and delivery.

Installed, the plugin is found through the ``microbroker`` entry-point group
and instruments every broker ``microbroker.get_broker`` creates, with
OpenTelemetry's global providers unless :func:`configure` chooses others.
"""

from __future__ import annotations

from .telemetry import (
    CONSUMED,
    PROCESS_DURATION,
    PUBLISH_DURATION,
    SENT,
    HeaderGetter,
    configure,
)

__all__ = [
    "CONSUMED",
    "PROCESS_DURATION",
    "PUBLISH_DURATION",
    "SENT",
    "HeaderGetter",
    "configure",
]
