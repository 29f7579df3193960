"""What concurrent large requests cost a subscriber in memory (issue 19).

Before the fix, eight concurrent large requests were each read whole (twice:
aiohttp's buffer and its copy) and held until their message was handled, and
a header map in a request was parsed whatever its size: eight requests peaked
at 600+ MB. Now the server holds at most ``max_request_bytes`` of request
bodies at once (a request beyond it is answered 503 and the publisher
retries), and refuses a request with more JSON values than its headers may
have before parsing it.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support.http_procs import Peer

from microbroker.registries.local import LocalRegistry

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/<pid>/status")

MIB = 1024 * 1024
REQUESTS = 8
DEFAULT_BUDGET = 32 * MIB  # HttpBroker(max_request_bytes=...) default
# Reading and decoding a go-micro envelope takes about three times its size for a moment,
# and what is admitted is held until handled: four budgets bound it.
GROWTH_BOUND = 4 * DEFAULT_BUDGET


def _memory(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no {key} in /proc/{pid}/status")


async def _node(registry_dir: Path, topic: str) -> tuple[str, int, str]:
    for service in await LocalRegistry(registry_dir).get_service("micro.http.broker"):
        for node in service.nodes:
            if node.metadata.get("topic") == topic:
                host, _, port = node.address.rpartition(":")
                return host, int(port), node.id
    raise AssertionError(f"no node for {topic!r}")


def _post_until_accepted(
    host: str, port: int, node_id: str, body: bytes, statuses: list[int]
) -> None:
    """POST as a go-micro publisher would, retrying on 503 (busy) as microbroker's does."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        conn = http.client.HTTPConnection(host, port, timeout=120)
        try:
            conn.request("POST", f"/?id={node_id}", body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
        finally:
            conn.close()
        statuses.append(response.status)
        if response.status != 503:
            return
        time.sleep(0.2)
    raise AssertionError("the request was refused as busy for two minutes")


def _concurrently(host: str, port: int, node_id: str, body: bytes) -> list[int]:
    statuses: list[int] = []
    threads = [
        threading.Thread(target=_post_until_accepted, args=(host, port, node_id, body, statuses))
        for _ in range(REQUESTS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses


async def test_eight_concurrent_large_requests_stay_within_the_request_budget(
    peer: Callable[..., Peer], registry_dir: Path
) -> None:
    sub = peer("sub", "big", "--delay", "1")  # a handler slow enough to hold what it was sent
    sub.wait_line("ready")
    host, port, node_id = await _node(registry_dir, "big")
    pid = sub.proc.pid
    # The largest message the default max_message_size (8 MiB) allows, in go-micro's envelope.
    body = b"x" * (8 * MIB - 1024)
    envelope = json.dumps(
        {"Header": {"Micro-Topic": "big"}, "Body": base64.b64encode(body).decode()}
    ).encode()
    before = _memory(pid, "VmRSS")
    statuses = await asyncio.to_thread(_concurrently, host, port, node_id, envelope)
    growth = _memory(pid, "VmHWM") - before
    print(
        f"\n{REQUESTS} concurrent requests of {len(envelope) / MIB:.1f} MiB: peak RSS grew by "
        f"{growth / MIB:.0f} MiB; answers {sorted(statuses)}"
    )
    assert growth < GROWTH_BOUND, f"peak RSS grew by {growth / MIB:.0f} MiB"
    assert statuses.count(200) == REQUESTS, statuses
    assert 503 in statuses, "the budget never refused a request"
    await asyncio.to_thread(sub.wait_deliveries, REQUESTS)


async def test_a_huge_header_map_is_refused_before_it_is_parsed(
    peer: Callable[..., Peer], registry_dir: Path
) -> None:
    """400,000 headers in eight concurrent requests: 400 at once, and little memory."""
    sub = peer("sub", "big")
    sub.wait_line("ready")
    host, port, node_id = await _node(registry_dir, "big")
    pid = sub.proc.pid
    headers: dict[str, Any] = {"Micro-Topic": "big", **{f"h{i}": "" for i in range(400_000)}}
    envelope = json.dumps({"Header": headers, "Body": ""}, separators=(",", ":")).encode()
    before = _memory(pid, "VmRSS")
    statuses = await asyncio.to_thread(_concurrently, host, port, node_id, envelope)
    growth = _memory(pid, "VmHWM") - before
    print(
        f"\n{REQUESTS} concurrent requests of 400,000 headers ({len(envelope) / MIB:.1f} MiB): "
        f"peak RSS grew by {growth / MIB:.0f} MiB; answers {sorted(statuses)}"
    )
    assert growth < GROWTH_BOUND, f"peak RSS grew by {growth / MIB:.0f} MiB"
    assert set(statuses) <= {400, 503}
    assert statuses.count(400) == REQUESTS
    assert not sub.deliveries
