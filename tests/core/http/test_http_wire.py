"""go-micro's wire format, spoken by plain HTTP clients, and requests the server must refuse."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import microbroker
from microbroker.brokers.http import HttpBroker, _wire
from microbroker.registries import Node, Service
from microbroker.registries.local import LocalRegistry

GO_MICRO_MESSAGE = {
    "Header": {"Micro-Topic": "greetings", "Content-Type": "text/plain", "Micro-Id": "42"},
    "Body": base64.b64encode(b"hello from go").decode(),
}


def _envelope(headers: dict[str, str], body: bytes = b"hi") -> bytes:
    return json.dumps(
        {"Header": {"Micro-Topic": "greetings", **headers}, "Body": base64.b64encode(body).decode()}
    ).encode()


def post(
    url: str, data: bytes, headers: dict[str, str] | None = None, method: str = "POST"
) -> tuple[int, str]:
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def apost(url: str, data: bytes, headers: dict[str, str] | None = None) -> tuple[int, str]:
    return await asyncio.to_thread(post, url, data, headers)


class Recorder:
    def __init__(self, fail: bool = False) -> None:
        self.deliveries: list[microbroker.Delivery] = []
        self.fail = fail

    async def __call__(self, delivery: microbroker.Delivery) -> None:
        self.deliveries.append(delivery)
        if self.fail:
            raise RuntimeError("handler failed on purpose")


async def subscription_url(broker: HttpBroker, registry_dir: Path, topic: str) -> str:
    """Find the subscription in the registry, as a go-micro publisher would."""
    services = await LocalRegistry(registry_dir).get_service("micro.http.broker")
    for service in services:
        for node in service.nodes:
            if node.metadata["topic"] == topic:
                scheme = "https" if node.metadata["secure"] == "true" else "http"
                return f"{scheme}://{node.address}/?id={node.id}"
    raise AssertionError(f"no node for {topic!r} in {services}")


async def test_registry_record_is_go_micros(
    make_broker: Callable[..., Any], registry_dir: Path
) -> None:
    sub = await make_broker()
    await sub.subscribe("greetings", Recorder())
    await sub.subscribe("greetings", Recorder(), queue="workers")
    services = await LocalRegistry(registry_dir).get_service("micro.http.broker")
    assert sorted(s.version for s in services) == ["ff.http.broadcast", "workers"]
    for service in services:
        (node,) = service.nodes
        assert node.metadata["broker"] == "http"
        assert node.metadata["topic"] == "greetings"
        assert node.metadata["secure"] == "false"
        assert node.address.startswith("127.0.0.1:"), "binds to loopback by default"
        assert node.id.startswith("greetings-")


async def test_a_go_micro_message_is_accepted(
    make_broker: Callable[..., Any], registry_dir: Path
) -> None:
    sub = await make_broker()
    inbox = Recorder()
    await sub.subscribe("greetings", inbox)
    url = await subscription_url(sub, registry_dir, "greetings")
    status, _ = await apost(
        url, json.dumps(GO_MICRO_MESSAGE).encode(), {"Content-Type": "application/json"}
    )
    assert status == 200
    (delivery,) = inbox.deliveries
    assert delivery.topic == "greetings"
    assert delivery.message.body == b"hello from go"
    assert delivery.message.header("micro-id") == "42"
    assert delivery.message.headers["Micro-Topic"] == "greetings"


async def test_a_handler_error_is_a_non_2xx_answer(
    make_broker: Callable[..., Any], registry_dir: Path
) -> None:
    sub = await make_broker()
    await sub.subscribe("greetings", Recorder(fail=True))
    url = await subscription_url(sub, registry_dir, "greetings")
    status, text = await apost(url, json.dumps(GO_MICRO_MESSAGE).encode())
    assert status == 500
    assert "did not accept" in text


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        (b"{not json", 400, "not JSON"),
        (b"[1, 2]", 400, "JSON object"),
        (b'{"Header": {"Micro-Topic": "greetings"}, "Body": "***"}', 400, "base64"),
        (b'{"Header": {"Micro-Topic": 5}, "Body": ""}', 400, "strings"),
        (b'{"Header": {}, "Body": "aGk="}', 400, "Micro-Topic"),
        (b'{"Header": {"Micro-Topic": "other"}, "Body": "aGk="}', 400, "does not match"),
        # Issue 19: a 500 and a logged RecursionError; now refused before json.loads.
        (b"[" * 200_000 + b"]" * 200_000, 400, "nested deeper than 64"),
        (
            b'{"Header": {"Micro-Topic": "greetings", "X": ' + b"[" * 70 + b"]" * 70 + b"}}",
            400,
            "nested deeper than 64",
        ),
        # Issue 19: a header map of 400,000 entries was accepted.
        (_envelope({f"h{i}": "" for i in range(400_000)}), 400, "too many headers"),
        (_envelope({f"X-{i}": "v" for i in range(257)}), 400, "258 headers, more than"),
        (_envelope({"X-Big": "v" * (64 * 1024)}), 400, "max_header_bytes"),
        (_envelope({"X-Wide": "é" * (32 * 1024)}), 400, "max_header_bytes"),
    ],
)
async def test_malformed_messages_get_400_and_harm_nothing(
    make_broker: Callable[..., Any],
    registry_dir: Path,
    body: bytes,
    status: int,
    reason: str,
) -> None:
    sub = await make_broker()
    inbox = Recorder()
    await sub.subscribe("greetings", inbox)
    url = await subscription_url(sub, registry_dir, "greetings")
    got, text = await apost(url, body)
    assert got == status
    assert reason in text
    assert not inbox.deliveries
    # The server still serves.
    assert (await apost(url, json.dumps(GO_MICRO_MESSAGE).encode()))[0] == 200
    assert len(inbox.deliveries) == 1


async def test_unknown_or_missing_id(make_broker: Callable[..., Any], registry_dir: Path) -> None:
    sub = await make_broker()
    await sub.subscribe("greetings", Recorder())
    url = await subscription_url(sub, registry_dir, "greetings")
    base = url.split("?")[0]
    assert (await apost(base + "?id=nope", json.dumps(GO_MICRO_MESSAGE).encode()))[0] == 404
    assert (await apost(base, json.dumps(GO_MICRO_MESSAGE).encode()))[0] == 400
    status, _ = await asyncio.to_thread(post, url, b"", None, "GET")
    assert status == 405


async def test_a_body_over_the_limit_gets_413(
    make_broker: Callable[..., Any], registry_dir: Path
) -> None:
    sub = await make_broker(max_message_size=1024 * 1024)
    inbox = Recorder()
    await sub.subscribe("greetings", inbox)
    url = await subscription_url(sub, registry_dir, "greetings")
    huge = b'{"Header": {"Micro-Topic": "greetings"}, "Body": "' + b"A" * (4 * 1024 * 1024) + b'"}'
    status, _ = await apost(url, huge)
    assert status == 413
    assert not inbox.deliveries
    assert (await apost(url, json.dumps(GO_MICRO_MESSAGE).encode()))[0] == 200


async def test_a_publish_over_the_limit_is_refused_before_sending(
    make_broker: Callable[..., Any],
) -> None:
    broker = await make_broker(max_message_size=1024 * 1024)
    await broker.subscribe("greetings", Recorder())
    with pytest.raises(microbroker.PublishError, match="max_message_size"):
        await broker.publish("greetings", microbroker.Message(b"x" * (1024 * 1024 + 1)))


async def test_shared_secret_guards_every_request(
    make_broker: Callable[..., Any], registry_dir: Path
) -> None:
    sub = await make_broker(secret="s3cret")
    inbox = Recorder()
    await sub.subscribe("greetings", inbox)
    url = await subscription_url(sub, registry_dir, "greetings")
    message = json.dumps(GO_MICRO_MESSAGE).encode()
    assert (await apost(url, message))[0] == 401
    assert (await apost(url, message, {"Authorization": "Bearer wrong"}))[0] == 401
    assert (await apost(url + "x", message))[0] == 401, "unknown ids are not revealed"
    assert not inbox.deliveries
    assert (await apost(url, message, {"Authorization": "Bearer s3cret"}))[0] == 200
    # Brokers with the same secret talk; one without it is told why it fails.
    good = await make_broker(secret="s3cret")
    await good.publish("greetings", microbroker.Message(b"ok"), confirm=True)
    bad = await make_broker(secret=None)
    with pytest.raises(microbroker.PublishError, match="401"):
        await bad.publish("greetings", microbroker.Message(b"no"), confirm=True)
    assert [d.message.body for d in inbox.deliveries][-1] == b"ok"


async def test_a_slow_client_times_out(make_broker: Callable[..., Any], registry_dir: Path) -> None:
    sub = await make_broker(read_timeout=0.5, idle_timeout=0.5)
    inbox = Recorder()
    await sub.subscribe("greetings", inbox)
    url = await subscription_url(sub, registry_dir, "greetings")
    host, port = url.split("/")[2].split(":")
    path = "/" + url.split("/", 3)[3]

    def slow_body() -> bytes:
        with socket.create_connection((host, int(port)), timeout=30) as conn:
            conn.sendall(
                f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n".encode()
                + b'{"Header"'
            )
            return conn.recv(1000)

    def silent() -> bytes:
        with socket.create_connection((host, int(port)), timeout=30) as conn:
            conn.sendall(b"POST / HTTP/1.1\r\nHost: x\r\n")  # and never the end of the headers
            return conn.recv(1000)

    assert b" 408 " in await asyncio.to_thread(slow_body)
    assert await asyncio.to_thread(silent) == b"", "the connection is closed"
    assert not inbox.deliveries
    assert (await apost(url, json.dumps(GO_MICRO_MESSAGE).encode()))[0] == 200


async def test_publishing_to_a_go_micro_subscriber_uses_its_wire_format(
    make_broker: Callable[..., Any], registry_dir: Path
) -> None:
    """A subscriber registered as go-micro does (no microbroker metadata) gets single POSTs."""
    received: list[tuple[str, str | None, dict[str, Any]]] = []

    async def handle(request: web.Request) -> web.Response:
        received.append((request.query_string, request.content_type, await request.json()))
        return web.Response()

    app = web.Application()
    app.router.add_post("/", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    node = Node(
        "greetings-go-node",
        f"127.0.0.1:{port}",
        {"broker": "http", "topic": "greetings", "secure": "false"},
    )
    registry = LocalRegistry(registry_dir)
    await registry.register(Service("micro.http.broker", "ff.http.broadcast", {}, [node]))
    try:
        pub = await make_broker()
        await pub.publish(
            "greetings", microbroker.Message(b"\x00hi", {"Content-Type": "x"}), confirm=True
        )
    finally:
        await runner.cleanup()
    ((query, content_type, envelope),) = received
    assert query == "id=greetings-go-node"
    assert content_type == "application/json"
    assert envelope == {
        "Header": {"Content-Type": "x", "Micro-Topic": "greetings"},
        "Body": base64.b64encode(b"\x00hi").decode(),
    }


async def test_headers_at_the_limits_are_accepted_from_go_micro(
    make_broker: Callable[..., Any], registry_dir: Path
) -> None:
    """256 headers (and Micro-Topic), or 64 KiB of them, are what a publisher may send."""
    sub = await make_broker()
    inbox = Recorder()
    await sub.subscribe("greetings", inbox)
    url = await subscription_url(sub, registry_dir, "greetings")
    many = {f"X-{i}": "v" for i in range(256)}
    assert (await apost(url, _envelope(many)))[0] == 200
    room = 64 * 1024 - len("X-Big")
    assert (await apost(url, _envelope({"X-Big": "v" * room}, b"\0" * 1000)))[0] == 200
    assert [len(d.message.headers) for d in inbox.deliveries] == [257, 2]


def _batch(*frames: tuple[dict[str, str] | bytes, bytes]) -> bytes:
    parts = []
    for head, body in frames:
        raw = head if isinstance(head, bytes) else json.dumps(head).encode()
        parts.append(_wire.encode_frame(1, raw, body))
    return b"".join(parts)


@pytest.mark.parametrize(
    ("head", "reason"),
    [
        (b"[" * 5_000 + b"]" * 5_000, "nested deeper than 64"),
        ({"Micro-Topic": "greetings", **{f"X-{i}": "v" for i in range(257)}}, "258 headers"),
        ({"Micro-Topic": "greetings", "X-Big": "v" * (64 * 1024)}, "max_header_bytes"),
        (b'{"Micro-Topic": "greetings", "X": "' + b"v" * (800 * 1024) + b'"}', "bytes of JSON"),
    ],
)
async def test_batch_frames_beyond_the_limits_get_400(
    make_broker: Callable[..., Any], registry_dir: Path, head: dict[str, str] | bytes, reason: str
) -> None:
    sub = await make_broker()
    inbox = Recorder()
    await sub.subscribe("greetings", inbox)
    url = await subscription_url(sub, registry_dir, "greetings")
    batch = {"Content-Type": _wire.BATCH_TYPE}
    good = ({"Micro-Topic": "greetings"}, b"fine")
    status, text = await apost(url, _batch(good, (head, b"x")), batch)
    assert status == 400
    assert reason in text
    assert not inbox.deliveries, "a bad frame refuses its whole batch"
    status, text = await apost(url, _batch(good), batch)
    assert (status, json.loads(text)) == (200, [None])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    doc=st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=8),
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
        ),
        max_leaves=40,
    ),
    depth=st.integers(min_value=0, max_value=300),
    headers=st.dictionaries(st.text(max_size=12), st.text(max_size=40), max_size=300),
)
def test_any_envelope_or_frame_decodes_within_the_limits_or_is_a_wire_error(
    doc: Any, depth: int, headers: dict[str, str]
) -> None:
    """Whatever arrives: headers within the limits, or WireError (a 400), never another error."""
    limits = _wire.Limits.for_topic("t", 256, 64 * 1024)
    nested = b"[" * depth + json.dumps(doc).encode() + b"]" * depth
    envelope = {"Header": {"Micro-Topic": "t", **headers}, "Body": "aGk=", "X": doc}
    for data in (
        nested,
        json.dumps(envelope).encode(),
        b'{"Header": ' + nested + b', "Body": ""}',
    ):
        try:
            got, _body = _wire.decode_envelope(data, limits)
        except _wire.WireError as exc:
            refused = str(exc)
            assert refused
        else:
            assert len(got) <= 257
            assert all(isinstance(v, str) for v in got.values())
    for head in (nested, json.dumps({"Micro-Topic": "t", **headers}).encode()):
        try:
            frames = _wire.decode_batch(_wire.encode_frame(1, head, b"body"), limits)
        except _wire.WireError as exc:
            refused = str(exc)
            assert refused
        else:
            ((_attempt, got, body),) = frames
            assert len(got) <= 257
            assert body == b"body"
    deep = depth > _wire.MAX_DEPTH
    if deep:
        with pytest.raises(_wire.WireError, match="nested deeper"):
            _wire.decode_envelope(nested, limits)
