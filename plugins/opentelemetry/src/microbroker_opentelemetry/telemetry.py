"""The tracer, the metric instruments and the propagator the hooks use, and how to set them."""

from __future__ import annotations

import importlib.metadata
import time
from dataclasses import dataclass

from opentelemetry import metrics, propagate, trace
from opentelemetry.metrics import Counter, Histogram, MeterProvider, NoOpMeterProvider
from opentelemetry.propagators.textmap import Getter, TextMapPropagator
from opentelemetry.trace import NoOpTracerProvider, ProxyTracerProvider, Tracer, TracerProvider

from microbroker import Message

SCOPE = "microbroker_opentelemetry"
try:
    VERSION = importlib.metadata.version("microbroker-opentelemetry")
except importlib.metadata.PackageNotFoundError:  # pragma: no cover - run from a checkout
    VERSION = "0+unknown"

# Metric names and units from the OpenTelemetry semantic conventions for messaging.
SENT = "messaging.client.sent.messages"
CONSUMED = "messaging.client.consumed.messages"
PUBLISH_DURATION = "messaging.client.operation.duration"
PROCESS_DURATION = "messaging.process.duration"


@dataclass(frozen=True, slots=True)
class Telemetry:
    """What the hooks record with: one tracer, four instruments, one propagator."""

    tracer: Tracer
    propagator: TextMapPropagator | None
    """``None``: the global propagator, looked up per message (it may be set after us)."""
    sent: Counter
    consumed: Counter
    publish_duration: Histogram
    process_duration: Histogram

    @property
    def textmap(self) -> TextMapPropagator:
        return self.propagator or propagate.get_global_textmap()


def _build(
    tracer_provider: TracerProvider | None,
    meter_provider: MeterProvider | None,
    propagator: TextMapPropagator | None,
) -> Telemetry:
    # The API returns proxies when no provider is given: they follow the global
    # providers even when the application sets them after this module was imported.
    tracer = trace.get_tracer(SCOPE, VERSION, tracer_provider=tracer_provider)
    meter = metrics.get_meter(SCOPE, VERSION, meter_provider=meter_provider)
    return Telemetry(
        tracer=tracer,
        propagator=propagator,
        sent=meter.create_counter(
            SENT, unit="{message}", description="Messages handed to the broker by publish."
        ),
        consumed=meter.create_counter(
            CONSUMED, unit="{message}", description="Messages delivered to a handler."
        ),
        publish_duration=meter.create_histogram(
            PUBLISH_DURATION, unit="s", description="Duration of each publish."
        ),
        process_duration=meter.create_histogram(
            PROCESS_DURATION, unit="s", description="Duration of each handler run."
        ),
    )


_current = _build(None, None, None)
_explicit = False
_global_seen = False
_next_check = 0.0
RECHECK = 1.0
"""Seconds between two looks at the global providers while none is set."""


def current() -> Telemetry:
    """The telemetry the hooks record with now."""
    return _current


def enabled() -> bool:
    """Whether anything would be recorded: a provider was configured, here or globally.

    With neither, the API hands out no-op spans and instruments, which would
    still cost a context switch and a header lookup per message: the hooks then
    pass messages straight through. The global providers are looked at again
    at most every :data:`RECHECK` seconds, and once one is set it stays set
    (OpenTelemetry allows it once), so the answer is cached from then on.
    """
    global _global_seen, _next_check
    if _explicit or _global_seen:
        return True
    now = time.monotonic()
    if now < _next_check:
        return False
    _next_check = now + RECHECK
    tracing = not isinstance(trace.get_tracer_provider(), ProxyTracerProvider | NoOpTracerProvider)
    meter_provider = metrics.get_meter_provider()
    # The API's stand-in before a meter provider is set is private: recognise it by name.
    metering = not isinstance(meter_provider, NoOpMeterProvider) and (
        type(meter_provider).__name__ != "_ProxyMeterProvider"
    )
    _global_seen = tracing or metering
    return _global_seen


def configure(
    *,
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
    propagator: TextMapPropagator | None = None,
) -> None:
    """Choose the providers and the propagator (default: OpenTelemetry's global ones).

    Call it once at start-up, or not at all when the application sets the
    global providers (``trace.set_tracer_provider`` and so on). It applies to
    brokers and subscriptions created before the call too. Without an SDK
    installed and configured, the API's no-op tracer and meter make every hook
    nearly free and nothing is recorded.
    """
    global _current, _explicit, _global_seen, _next_check
    _current = _build(tracer_provider, meter_provider, propagator)
    _explicit = tracer_provider is not None or meter_provider is not None
    _global_seen = False
    _next_check = 0.0


class HeaderGetter(Getter[Message]):
    """Reads trace context from message headers, case-insensitively.

    Transports and HTTP proxies do not all keep the case of a header name:
    ``traceparent`` may arrive as ``Traceparent``.
    """

    def get(self, carrier: Message, key: str) -> list[str] | None:
        value = carrier.header(key)
        return None if value is None else [value]

    def keys(self, carrier: Message) -> list[str]:
        return list(carrier.headers)


HEADER_GETTER = HeaderGetter()
