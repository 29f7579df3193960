"""A publishing service in its own process: publishes once inside a span, prints its spans as JSON.

python otel_publisher.py TOPIC BODY   (MICRO_BROKER and the registry from the environment)
"""

from __future__ import annotations

import asyncio
import json
import sys

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import microbroker


async def main(topic: str, body: str) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    broker = microbroker.get_broker()
    # The application's usual set-up, after the broker exists: the plugin follows the
    # global provider without being configured itself.
    trace.set_tracer_provider(provider)
    tracer = trace.get_tracer("otel_publisher")
    async with broker:
        with tracer.start_as_current_span("checkout"):
            # confirm: the delivery is done when this returns, before the process exits.
            await broker.publish(topic, microbroker.Message(body.encode()), confirm=True)
    spans = [
        {
            "name": span.name,
            "kind": span.kind.name,
            "trace_id": f"{span.context.trace_id:032x}",
            "span_id": f"{span.context.span_id:016x}",
            "parent_id": f"{span.parent.span_id:016x}" if span.parent else None,
        }
        for span in exporter.get_finished_spans()
    ]
    print(json.dumps(spans), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
