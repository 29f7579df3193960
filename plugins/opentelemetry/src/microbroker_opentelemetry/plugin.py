"""The hook implementations: a producer span per publish, a consumer span per delivery.

A publish opens a ``PRODUCER`` span and writes its W3C trace context
(``traceparent``, ``tracestate``, ``baggage``) into the message headers; a
delivery reads it back and opens a ``CONSUMER`` span as its child, current
while the handler runs. So a trace follows a message from one service into
the next, and whatever the handler publishes or calls joins the same trace.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from microbroker import Broker, Delivery, Message, hookimpl

from .telemetry import HEADER_GETTER, current, enabled

MICROBROKER_API = ">=1.0,<2"  # the plugin API versions this plugin is written for

Publish = Callable[..., Awaitable[None]]
Handler = Callable[[Delivery], Awaitable[None]]

# The consumer span of the delivery whose handler is running, for on_error: an error
# reported for that delivery (an undecodable body, say) is recorded on its span.
_delivery_span: ContextVar[tuple[Delivery, Span] | None] = ContextVar(
    "microbroker_opentelemetry_delivery", default=None
)


def _system(broker: Broker) -> str:
    return str(getattr(broker, "name", None) or type(broker).__name__)


@hookimpl
def wrap_publish(broker: Broker, publish: Publish) -> Publish:
    """Open a producer span around each publish and inject its context into the headers."""
    system = _system(broker)

    async def traced_publish(topic: str, message: Message, **options: Any) -> None:
        if not enabled():
            return await publish(topic, message, **options)
        telemetry = current()
        attributes: dict[str, Any] = {
            "messaging.system": system,
            "messaging.destination.name": topic,
            "messaging.operation.name": "publish",
            "messaging.operation.type": "send",
        }
        metric_attributes = {"messaging.system": system, "messaging.destination.name": topic}
        message_id = message.header("Micro-Id")
        if message_id is not None:
            attributes["messaging.message.id"] = message_id
        attributes["messaging.message.body.size"] = len(message.body)
        started = time.perf_counter()
        with telemetry.tracer.start_as_current_span(
            f"publish {topic}",
            kind=SpanKind.PRODUCER,
            attributes=attributes,
            record_exception=True,
            set_status_on_exception=True,
        ) as span:
            # The headers carry the context of this span: the consumer becomes its child.
            telemetry.textmap.inject(message.headers)
            try:
                await publish(topic, message, **options)
            except BaseException as exc:
                error = {**metric_attributes, "error.type": type(exc).__qualname__}
                span.set_attribute("error.type", type(exc).__qualname__)
                telemetry.sent.add(1, error)
                telemetry.publish_duration.record(time.perf_counter() - started, error)
                raise
        telemetry.sent.add(1, metric_attributes)
        telemetry.publish_duration.record(time.perf_counter() - started, metric_attributes)
        return None

    return traced_publish


@hookimpl
def wrap_handler(broker: Broker, topic: str, queue: str | None, handler: Handler) -> Handler:
    """Run each handler inside a consumer span, child of the publisher's span."""
    system = _system(broker)
    base: dict[str, Any] = {
        "messaging.system": system,
        "messaging.destination.name": topic,
        "messaging.operation.name": "process",
        "messaging.operation.type": "process",
    }
    metric_attributes: dict[str, Any] = {
        "messaging.system": system,
        "messaging.destination.name": topic,
    }
    if queue:
        base["messaging.consumer.group.name"] = queue
        metric_attributes["messaging.consumer.group.name"] = queue

    async def traced_handler(delivery: Delivery) -> None:
        if not enabled():
            return await handler(delivery)
        telemetry = current()
        message = delivery.message
        parent = telemetry.textmap.extract(message, getter=HEADER_GETTER)
        attributes = dict(base)
        if delivery.topic != topic:  # a wildcard subscription: the concrete topic
            attributes["messaging.destination.name"] = delivery.topic
            attributes["messaging.destination.template"] = topic
        message_id = message.header("Micro-Id")
        if message_id is not None:
            attributes["messaging.message.id"] = message_id
        attributes["messaging.message.body.size"] = len(message.body)
        attributes["microbroker.delivery.attempt"] = delivery.attempt
        started = time.perf_counter()
        span = telemetry.tracer.start_span(
            f"process {topic}", context=parent, kind=SpanKind.CONSUMER, attributes=attributes
        )
        token = otel_context.attach(trace.set_span_in_context(span))
        marker = _delivery_span.set((delivery, span))
        outcome = metric_attributes
        try:
            await handler(delivery)
        except BaseException as exc:
            outcome = {**metric_attributes, "error.type": type(exc).__qualname__}
            _record_error(span, exc)
            raise
        finally:
            _delivery_span.reset(marker)
            otel_context.detach(token)
            span.end()
            telemetry.consumed.add(1, outcome)
            telemetry.process_duration.record(time.perf_counter() - started, outcome)

    return traced_handler


@hookimpl
def on_error(error: BaseException, delivery: Delivery | None) -> None:
    """Mark the consumer span of ``delivery`` failed (a body that did not decode, say)."""
    running = _delivery_span.get()
    if running is not None and delivery is not None and running[0] is delivery:
        _record_error(running[1], error)


def _record_error(span: Span, error: BaseException) -> None:
    if span.is_recording():
        span.record_exception(error)
        span.set_attribute("error.type", type(error).__qualname__)
        span.set_status(Status(StatusCode.ERROR, str(error) or type(error).__qualname__))
