"""The OpenTelemetry plugin through the event hooks: spans, trace context in headers, metrics."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import Recorded
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode

import microbroker
from microbroker import Context, Delivery, Message, RpcError, Service
from microbroker._plugins import registry

HERE = Path(__file__).resolve().parent


def memory() -> microbroker.Broker:
    # A fresh in-process bus per test: the memory broker's address names it.
    return microbroker.get_broker("memory", address=f"otel-{uuid.uuid4().hex}")


def traceparent(span: Any) -> str:
    context = span.context
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def test_the_plugin_is_found_through_its_entry_point() -> None:
    reg = registry()
    plugin = reg.pm.get_plugin("opentelemetry")
    assert plugin is not None, "microbroker-opentelemetry is not registered"
    assert reg._dist_of[id(plugin)][0] == "microbroker-opentelemetry"
    assert reg.event_hooks().publishes
    assert reg.event_hooks().delivers
    assert not [e for e in microbroker.plugin_errors() if "opentelemetry" in str(e)]


async def test_one_trace_across_a_publish_and_its_delivery(recorded: Recorded) -> None:
    broker = memory()
    seen: list[tuple[dict[str, str], Any]] = []
    done = asyncio.Event()

    async def handler(delivery: Delivery) -> None:
        seen.append((dict(delivery.message.headers), trace.get_current_span()))
        done.set()

    async with broker:
        await broker.subscribe("orders", handler, queue="billing")
        outer = microbroker_tracer(recorded)
        with outer.start_as_current_span("checkout"):
            await broker.publish("orders", Message(b'{"id": 1}', {"Micro-Id": "m-1"}))
        await asyncio.wait_for(done.wait(), 10)

    checkout = recorded.span("checkout")
    producer = recorded.span("publish orders")
    consumer = recorded.span("process orders")
    # One trace: checkout -> publish -> process.
    assert producer.context.trace_id == checkout.context.trace_id
    assert consumer.context.trace_id == checkout.context.trace_id
    assert producer.parent is not None
    assert producer.parent.span_id == checkout.context.span_id
    assert consumer.parent is not None
    assert consumer.parent.span_id == producer.context.span_id
    assert consumer.parent.is_remote  # it came through the headers, not the context
    assert producer.kind is SpanKind.PRODUCER
    assert consumer.kind is SpanKind.CONSUMER
    # The W3C trace context travelled in the message headers.
    headers, current = seen[0]
    assert headers["traceparent"] == traceparent(producer)
    # The handler ran with the consumer span current.
    assert current.get_span_context().span_id == consumer.context.span_id
    assert producer.attributes is not None
    assert dict(producer.attributes) == {
        "messaging.system": "memory",
        "messaging.destination.name": "orders",
        "messaging.operation.name": "publish",
        "messaging.operation.type": "send",
        "messaging.message.id": "m-1",
        "messaging.message.body.size": 9,
    }
    assert consumer.attributes is not None
    assert consumer.attributes["messaging.consumer.group.name"] == "billing"
    assert consumer.attributes["messaging.operation.type"] == "process"
    assert consumer.attributes["messaging.message.id"] == "m-1"
    assert consumer.attributes["microbroker.delivery.attempt"] == 1
    assert producer.status.status_code is StatusCode.UNSET
    assert consumer.status.status_code is StatusCode.UNSET


def microbroker_tracer(recorded: Recorded) -> trace.Tracer:
    """A tracer on the provider the plugin records with, for the application's own spans."""
    from microbroker_opentelemetry.telemetry import current

    del recorded
    return current().tracer


async def test_what_a_handler_publishes_joins_the_trace(recorded: Recorded) -> None:
    broker = memory()
    done = asyncio.Event()

    async def forward(delivery: Delivery) -> None:
        await broker.publish("shipping", Message(delivery.message.body))

    async def ship(delivery: Delivery) -> None:
        done.set()

    async with broker:
        await broker.subscribe("orders", forward)
        await broker.subscribe("shipping", ship)
        await broker.publish("orders", Message(b"1"))
        await asyncio.wait_for(done.wait(), 10)

    chain = [
        recorded.span(name)
        for name in ("publish orders", "process orders", "publish shipping", "process shipping")
    ]
    assert len({span.context.trace_id for span in chain}) == 1
    for parent, child in itertools.pairwise(chain):
        assert child.parent is not None
        assert child.parent.span_id == parent.context.span_id


async def test_a_failing_handler_marks_its_span_and_the_redelivery_is_traced(
    recorded: Recorded,
) -> None:
    broker = microbroker.get_broker("memory", address=f"otel-{uuid.uuid4().hex}")
    attempts: list[int] = []
    done = asyncio.Event()

    async def flaky(delivery: Delivery) -> None:
        attempts.append(delivery.attempt)
        if delivery.attempt == 1:
            raise RuntimeError("database down")
        done.set()

    async with broker:
        await broker.subscribe("orders", flaky)
        await broker.publish("orders", Message(b"1"))
        await asyncio.wait_for(done.wait(), 10)

    assert attempts == [1, 2]
    producer = recorded.span("publish orders")
    consumers = sorted(
        (span for span in recorded.spans() if span.name == "process orders"),
        key=lambda span: span.attributes["microbroker.delivery.attempt"],  # type: ignore[index]
    )
    assert len(consumers) == 2
    failed, retried = consumers
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.attributes is not None
    assert failed.attributes["error.type"] == "RuntimeError"
    assert [event.name for event in failed.events] == ["exception"]
    assert failed.events[0].attributes is not None
    assert failed.events[0].attributes["exception.message"] == "database down"
    assert retried.status.status_code is StatusCode.UNSET
    # Both attempts belong to the publisher's trace.
    for span in consumers:
        assert span.parent is not None
        assert span.parent.span_id == producer.context.span_id

    consumed = {
        point.attributes.get("error.type"): point.value
        for point in recorded.points("messaging.client.consumed.messages")
    }
    assert consumed == {"RuntimeError": 1, None: 1}


async def test_counters_and_durations(recorded: Recorded) -> None:
    broker = memory()
    got: list[bytes] = []
    done = asyncio.Event()

    async def handler(delivery: Delivery) -> None:
        got.append(delivery.message.body)
        if len(got) == 5:
            done.set()

    async with broker:
        await broker.subscribe("metrics", handler, queue="q")
        for n in range(5):
            await broker.publish("metrics", Message(str(n).encode()))
        await asyncio.wait_for(done.wait(), 10)

    sent = recorded.points("messaging.client.sent.messages")
    assert [(dict(p.attributes), p.value) for p in sent] == [
        ({"messaging.system": "memory", "messaging.destination.name": "metrics"}, 5)
    ]
    consumed = recorded.points("messaging.client.consumed.messages")
    assert [(dict(p.attributes), p.value) for p in consumed] == [
        (
            {
                "messaging.system": "memory",
                "messaging.destination.name": "metrics",
                "messaging.consumer.group.name": "q",
            },
            5,
        )
    ]
    (process,) = recorded.points("messaging.process.duration")
    assert process.count == 5
    assert process.min >= 0
    (publish,) = recorded.points("messaging.client.operation.duration")
    assert publish.count == 5


async def test_a_failed_publish_is_an_error_span_and_counted(recorded: Recorded) -> None:
    broker = microbroker.get_broker("http", registry="memory")
    async with broker:
        with pytest.raises(microbroker.PublishError):
            await broker.publish("nobody", Message(b"x"))
    producer = recorded.span("publish nobody")
    assert producer.status.status_code is StatusCode.ERROR
    assert producer.attributes is not None
    assert producer.attributes["error.type"] == "PublishError"
    assert producer.attributes["messaging.system"] == "http"
    (point,) = recorded.points("messaging.client.sent.messages")
    assert point.attributes["error.type"] == "PublishError"
    assert point.value == 1


@dataclass
class Order:
    id: int


async def test_an_undecodable_body_marks_the_consumer_span(recorded: Recorded) -> None:
    broker = memory()
    service = Service("shop", broker=broker)
    errors: list[BaseException] = []

    @service.subscriber("orders")
    async def on_order(msg: Order, ctx: Context) -> None:  # never called: the body is bad
        errors.append(AssertionError("handler saw an undecodable body"))

    async with service:
        await broker.publish("orders", Message(b"{not json", {"Content-Type": "application/json"}))
        for _ in range(200):
            if any(s.name == "process orders" for s in recorded.spans()):
                break
            await asyncio.sleep(0.01)
    assert errors == []
    consumer = next(s for s in recorded.spans() if s.name == "process orders")
    assert consumer.status.status_code is StatusCode.ERROR
    assert consumer.attributes is not None
    assert consumer.attributes["error.type"] == "DecodeError"


class Greeter:
    async def Hello(self, request: dict[str, str], ctx: Context) -> dict[str, str]:
        if not request.get("name"):
            raise RpcError("greeter", 400, "a name is required")
        return {"message": f"Hello, {request['name']}!"}


async def test_an_rpc_call_is_one_trace_through_request_and_reply(recorded: Recorded) -> None:
    broker = memory()
    service = Service("greeter", broker=broker)
    service.handle(Greeter())
    async with service:
        with microbroker_tracer(recorded).start_as_current_span("caller"):
            reply = await service.client.call(
                "greeter", "Greeter.Hello", {"name": "Ada"}, dict, timeout=5
            )
    assert reply == {"message": "Hello, Ada!"}
    caller = recorded.span("caller")
    request_span = recorded.span("publish micro.rpc.greeter")
    served = recorded.span("process micro.rpc.greeter")
    assert request_span.parent is not None
    assert request_span.parent.span_id == caller.context.span_id
    assert served.parent is not None
    assert served.parent.span_id == request_span.context.span_id
    # The reply is published while the request is processed: a child of the server's span.
    replies = [
        s
        for s in recorded.spans()
        if s.kind is SpanKind.PRODUCER and s is not request_span and s.name != "caller"
    ]
    assert replies, recorded.names()
    for span in replies:
        assert span.context.trace_id == caller.context.trace_id
        assert span.parent is not None
        assert span.parent.span_id == served.context.span_id


async def test_without_a_provider_nothing_is_recorded_and_headers_are_untouched() -> None:
    # The API's defaults (no SDK configured globally): no-op spans, nothing injected.
    broker = memory()
    got: list[dict[str, str]] = []
    done = asyncio.Event()

    async def handler(delivery: Delivery) -> None:
        got.append(dict(delivery.message.headers))
        done.set()

    async with broker:
        await broker.subscribe("plain", handler)
        await broker.publish("plain", Message(b"x", {"k": "v"}))
        await asyncio.wait_for(done.wait(), 10)
    assert got == [{"k": "v"}]


async def test_one_trace_across_two_processes_over_http(
    recorded: Recorded, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry_dir = tmp_path / "registry"
    registry_dir.mkdir(mode=0o700)
    for name in [n for n in os.environ if n.startswith("MICRO_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("MICRO_REGISTRY_ADDRESS", str(registry_dir))
    broker = microbroker.get_broker()  # MICRO_BROKER unset: the http broker
    assert broker.name == "http"
    delivered: list[Delivery] = []
    done = asyncio.Event()

    async def handler(delivery: Delivery) -> None:
        delivered.append(delivery)
        done.set()

    async with broker:
        await broker.subscribe("payments", handler)
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            str(HERE / "otel_publisher.py"),
            "payments",
            "paid",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(child.communicate(), 60)
        assert child.returncode == 0, err.decode()
        await asyncio.wait_for(done.wait(), 10)

    publisher_spans = {span["name"]: span for span in json.loads(out)}
    checkout = publisher_spans["checkout"]
    producer = publisher_spans["publish payments"]
    assert producer["kind"] == "PRODUCER"
    assert producer["parent_id"] == checkout["span_id"]
    consumer = recorded.span("process payments")
    # The consumer, in this process, continues the publisher's trace.
    assert f"{consumer.context.trace_id:032x}" == checkout["trace_id"]
    assert consumer.parent is not None
    assert f"{consumer.parent.span_id:016x}" == producer["span_id"]
    assert consumer.attributes is not None
    assert consumer.attributes["messaging.system"] == "http"
    assert delivered[0].message.body == b"paid"
    assert (
        delivered[0]
        .message.header("traceparent", "")
        .startswith(f"00-{checkout['trace_id']}-{producer['span_id']}-")
    )


def test_microbroker_plugins_lists_the_hooks_it_implements() -> None:
    import subprocess

    script = Path(sys.executable).parent / "microbroker"
    result = subprocess.run(
        [str(script), "plugins"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    (row,) = [line for line in result.stdout.splitlines() if line.startswith("hooks")]
    assert row.split()[:2] == ["hooks", "opentelemetry"]
    assert "(wrap_publish, wrap_handler, on_error)" in row
    assert "microbroker-opentelemetry" in row
