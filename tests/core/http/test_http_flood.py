"""A flood of idle connections against a subscriber with few file descriptors (issue 19).

Before the fix, 1,100 idle TCP connections to a subscriber limited to 1,024
file descriptors took every descriptor: ``accept()`` failed with EMFILE in a
loop that logged a traceback each time (megabytes in seconds), the registry
renewals failed ("Too many open files") so the node dropped out, and
publishers got ``PublishError``. The flood needs no node id and no secret.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import resource
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support.eventually import eventually
from support.flood import Flood
from support.http_procs import Peer
from support.process import unavailable

import microbroker
from microbroker.registries.local import LocalRegistry

NOFILE = 1024
FLOOD = 1100
SLOWLORIS = 100
TTL = 3.0
FLOOD_SECONDS = 3 * TTL  # three registrations' lives: one missed renewal shows
LOG_BOUND = 16 * 1024

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_NOFILE and /proc")


def _need_descriptors() -> None:
    need = FLOOD + SLOWLORIS + 256
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < need:
        unavailable(f"the flood needs a hard open-file limit of {need}, not {hard}")


async def _node(registry_dir: Path, topic: str) -> microbroker.registries.Node | None:
    services = await LocalRegistry(registry_dir).get_service("micro.http.broker")
    for service in services:
        for node in service.nodes:
            if node.metadata.get("topic") == topic:
                return node
    return None


async def test_a_connection_flood_leaves_delivery_registration_and_the_log_alone(
    peer: Callable[..., Peer], make_broker: Callable[..., Any], registry_dir: Path
) -> None:
    _need_descriptors()
    sub = peer("sub", "flooded", "--nofile", str(NOFILE), "--ttl", str(TTL), "--log")
    sub.wait_line("ready")
    node = await _node(registry_dir, "flooded")
    assert node is not None
    host, _, port = node.address.rpartition(":")
    log_before = sub.stderr_bytes
    flood = Flood(host, int(port), FLOOD, partial=SLOWLORIS)
    try:
        await asyncio.to_thread(flood.wait_holding)
        pub = await make_broker()
        confirmed = 0
        failures: list[str] = []
        missing = 0
        lookups = 0
        started = time.monotonic()
        sent = 0
        # Publish through the flood for three TTLs: each publish waits for its ack.
        while time.monotonic() - started < FLOOD_SECONDS or sent < 50:
            body = str(sent).encode()
            sent += 1
            try:
                async with asyncio.timeout(20):
                    await pub.publish("flooded", microbroker.Message(body), confirm=True)
                confirmed += 1
            except (microbroker.PublishError, TimeoutError) as exc:
                failures.append(f"{type(exc).__name__}: {exc}"[:200])
            lookups += 1
            if await _node(registry_dir, "flooded") is None:
                missing += 1
            await asyncio.sleep(0.05)
            if sent >= 400:
                break
        counts = flood.counts
        log = sub.stderr_bytes - log_before
        print(
            f"\nflood of {FLOOD} idle + {SLOWLORIS} slowloris connections, "
            f"{time.monotonic() - started:.1f}s: {confirmed}/{sent} confirmed, node missing "
            f"in {missing}/{lookups} lookups, subscriber log {log} bytes; flood {counts}"
        )
        assert not failures, f"{len(failures)} of {sent} publishes failed: {failures[:3]}"
        assert confirmed == sent
        assert missing == 0, f"the node dropped out of the registry in {missing} lookups"
        assert log <= LOG_BOUND, f"the subscriber logged {log} bytes:\n{sub.stderr[-2000:]}"
        assert counts["closed"] > 0, "the server closed none of the idle connections"
    finally:
        flood.stop()
    await asyncio.to_thread(sub.wait_deliveries, sent)
    assert set(sub.bodies()) == {str(i) for i in range(sent)}


async def test_out_of_descriptors_the_server_pauses_accepting_with_one_warning(
    peer: Callable[..., Peer], make_broker: Callable[..., Any], registry_dir: Path
) -> None:
    """max_connections set above what the open-file limit allows: accept() meets EMFILE.

    The server lowers its bound to keep a reserve of descriptors free (the
    registration stays), gives back connections that sent nothing, pauses
    accepting for a growing delay, and warns once an interval instead of a
    traceback an attempt; publishers still deliver.
    """
    _need_descriptors()
    sub = peer(
        "sub", "starved", "--nofile", "256", "--max-connections", "5000", "--ttl", str(TTL), "--log"
    )
    sub.wait_line("ready")
    node = await _node(registry_dir, "starved")
    assert node is not None
    host, _, port = node.address.rpartition(":")
    log_before = sub.stderr_bytes
    flood = Flood(host, int(port), 400)
    pub = await make_broker()
    try:
        await asyncio.to_thread(flood.wait_holding)
        started = time.monotonic()
        missing = sent = 0
        while time.monotonic() - started < FLOOD_SECONDS:
            sent += 1
            async with asyncio.timeout(20):
                await pub.publish("starved", microbroker.Message(b"%d" % sent), confirm=True)
            if await _node(registry_dir, "starved") is None:
                missing += 1
            await asyncio.sleep(0.05)
        log = sub.stderr_bytes - log_before
        print(
            f"\nout of descriptors for {FLOOD_SECONDS}s: {sent} confirmed, node missing in "
            f"{missing} lookups, subscriber log {log} bytes; flood {flood.counts}"
        )
        assert "cannot accept connections" in sub.stderr, sub.stderr[-2000:]
        assert sub.stderr.count("cannot accept connections") <= 2
        assert log <= LOG_BOUND, f"the subscriber logged {log} bytes:\n{sub.stderr[-2000:]}"
        assert missing == 0, f"the node dropped out of the registry in {missing} lookups"
    finally:
        flood.stop()
    await asyncio.to_thread(sub.wait_deliveries, sent)


def _closed_by_server(sock: socket.socket, timeout: float = 15.0) -> bool:
    """Whether the server closes ``sock`` (EOF or reset) within ``timeout`` seconds."""
    sock.settimeout(timeout)
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


async def test_a_connection_that_sends_no_request_is_closed_after_open_timeout(
    make_broker: Callable[..., Any], registry_dir: Path
) -> None:
    sub = await make_broker(open_timeout=0.5, idle_timeout=60)
    await sub.subscribe("quiet", lambda delivery: asyncio.sleep(0))
    node = await _node(registry_dir, "quiet")
    assert node is not None
    host, _, port = node.address.rpartition(":")
    silent = socket.create_connection((host, int(port)))
    slow = socket.create_connection((host, int(port)))
    slow.sendall(b"POST / HTTP/1.1\r\nHost: x\r\n")  # and never the end of the head
    try:
        assert await asyncio.to_thread(_closed_by_server, silent), "a silent connection stayed"
        assert await asyncio.to_thread(_closed_by_server, slow), "a slowloris stayed"
    finally:
        silent.close()
        slow.close()
    assert sub._listener is not None
    assert sub._listener.open == 0


async def test_at_max_connections_a_new_one_takes_the_place_of_a_silent_one(
    make_broker: Callable[..., Any], registry_dir: Path
) -> None:
    sub = await make_broker(max_connections=4, open_timeout=60)
    release = asyncio.Event()
    got: list[bytes] = []

    async def handler(delivery: microbroker.Delivery) -> None:
        got.append(delivery.message.body)
        if delivery.message.body.startswith(b"hold"):
            await release.wait()

    await sub.subscribe("crowded", handler, max_concurrency=8)
    node = await _node(registry_dir, "crowded")
    assert node is not None
    host, _, port = node.address.rpartition(":")
    silent = [socket.create_connection((host, int(port))) for _ in range(4)]
    try:
        await eventually(lambda: sub._listener is not None and sub._listener.open == 4, "4 open")
        # A publisher gets in: the oldest silent connection makes room.
        pub = await make_broker()
        await pub.publish("crowded", microbroker.Message(b"in"), confirm=True)
        assert await asyncio.to_thread(_closed_by_server, silent[0], 5)
        await pub.disconnect()  # its kept-alive connection too frees a slot
        # Four requests in progress take every slot: a fifth connection is refused at once.
        url = f"/?id={node.id}"
        holders = [
            asyncio.create_task(asyncio.to_thread(_hold_a_request, host, int(port), url, i))
            for i in range(4)
        ]
        await eventually(lambda: len(got) == 5, "four requests in progress")
        extra = socket.create_connection((host, int(port)))
        try:
            assert await asyncio.to_thread(_closed_by_server, extra, 5)
        finally:
            extra.close()
        release.set()
        assert await asyncio.gather(*holders) == [200] * 4
    finally:
        for sock in silent:
            sock.close()


def _hold_a_request(host: str, port: int, url: str, i: int) -> int:
    body = json.dumps(
        {"Header": {"Micro-Topic": "crowded"}, "Body": base64.b64encode(b"hold%d" % i).decode()}
    )
    conn = http.client.HTTPConnection(host, port, timeout=60)
    try:
        conn.request("POST", url, body.encode(), {"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()
