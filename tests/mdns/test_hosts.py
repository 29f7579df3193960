"""Three hosts (namespaces on one switch), an http broker process in each, mdns between them.

Each process is configured with ``MICRO_REGISTRY=mdns`` and a listen address
only. They find each other, broadcast across hosts, share a queue group, and
one host goes down in the middle of a stream of confirmed publishes: its
process is killed and its link deleted. Every publish that returned was
handled by some host (nothing accepted is lost), and the queue group carries
on with the two hosts left.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from mdns_helpers import HostProcess
from support.netns import Lan, require_netns

pytestmark = pytest.mark.slow

JOBS = 1500
RATE = 250.0  # a second: the stream lasts about six seconds, the host goes down after ~1.2 s
KILL_AFTER = 300


@pytest.fixture
def lan3() -> Lan:
    require_netns()
    lan = Lan(3, tag="m")
    yield lan  # type: ignore[misc]
    lan.close()


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.parametrize("failure", ["kill", "crash", "unplug"])
def test_three_hosts_discover_broadcast_and_fail_over(
    lan3: Lan, start_host: Callable[..., HostProcess], tmp_path: Path, failure: str
) -> None:
    """How host 3 goes down: ``kill`` its process (the host's kernel resets its
    connections); ``crash``: kill it and delete its link (a host switched off);
    ``unplug``: delete the link only (a cable pulled: the process lives on, unreachable).
    """
    h1, h2, h3 = lan3.hosts
    for host in lan3.hosts:
        # Only the namespace's own interfaces: loopback and the veth to the switch.
        assert lan3.interfaces(host) == ["lo", "eth0"]
    procs = [start_host(host) for host in lan3.hosts]
    for proc in procs:
        ready = proc.wait_for(lambda e: e["event"] == "ready", "ready")
        assert ready["registry"] == "mdns"
        assert sorted(ready["interfaces"]) == sorted([proc.host.address, "127.0.0.1"])
        assert ready["address"].startswith(proc.host.address + ":")
        assert ready["environment"] == ["MICRO_BROKER_ADDRESS", "MICRO_REGISTRY"]
    for proc in procs:
        proc.wait_for(
            lambda e: e["event"] == "peers" and e["jobs"] == 3 and e["news"] == 3,
            "seeing the three hosts' subscriptions",
        )

    # Broadcast across hosts: each host's news reaches all three.
    for proc in procs:
        proc.send("news")
    for proc in procs:
        proc.wait_for(lambda e: e["event"] == "news-sent", "news confirmed by every host")
    for host in lan3.hosts:
        assert sorted(_lines(tmp_path / f"{host.name}.news")) == sorted(h.name for h in lan3.hosts)

    # A queue group across hosts, and host 3 goes down mid-stream.
    publisher = procs[0]
    publisher.send(f"publish {JOBS} {RATE}")
    publisher.wait_for(
        lambda e: e["event"] == "progress" and e["ok"] + e["error"] >= KILL_AFTER,
        f"{KILL_AFTER} jobs confirmed",
    )
    down_at = time.monotonic()
    if failure in ("kill", "crash"):
        procs[2].kill()
    if failure in ("crash", "unplug"):
        lan3.unplug(h3)
    done = publisher.wait_for(lambda e: e["event"] == "published", "the stream's end", 240)
    gone = publisher.wait_for(
        lambda e: e["event"] == "peers" and e["t"] > down_at and e["jobs"] == 2,
        "host 3 dropping out of host 1's lookups",
    )

    published = [line.split() for line in _lines(tmp_path / f"{h1.name}.published")]
    assert len(published) == JOBS
    accepted = {job for job, outcome, _, _ in published if outcome == "ok"}
    received = {host.name: _lines(tmp_path / f"{host.name}.jobs") for host in lan3.hosts}
    handled = set().union(*(set(jobs) for jobs in received.values()))
    lost = accepted - handled
    duplicates = sum(len(jobs) for jobs in received.values()) - len(handled)
    # Deliveries in flight when host 3 went down, confirmed by a host left.
    in_flight = [
        float(end) - down_at
        for _, outcome, start, end in published
        if outcome == "ok" and float(start) < down_at < float(end)
    ]
    after_down = [
        float(end) - float(start)
        for _, outcome, start, end in published
        if outcome == "ok" and float(start) >= down_at
    ]
    report = {
        "failure": failure,
        "published": JOBS,
        "accepted": len(accepted),
        "failed": done["error"],
        "received_by_host": {name: len(jobs) for name, jobs in received.items()},
        "lost": len(lost),
        "duplicates": duplicates,
        "in_flight_at_down": len(in_flight),
        "slowest_in_flight_confirm_s": round(max(in_flight, default=0.0), 3),
        "slowest_confirm_after_down_s": round(max(after_down, default=0.0), 3),
        "host3_out_of_lookups_after_s": round(gone["t"] - down_at, 3),
    }
    print(f"\nmulti-host mdns failover: {report}")
    assert not lost, f"accepted but never handled: {sorted(lost)[:10]}"
    assert done["error"] == 0
    assert len(accepted) == JOBS
    # Every host took part before the failure, and the two left after it.
    assert all(received[h.name] for h in lan3.hosts)
    after = {
        job
        for job, outcome, start, _ in published
        if outcome == "ok" and float(start) > down_at + 10 / RATE
    }
    for host in (h1, h2):
        assert after & set(received[host.name]), f"{host.name} got nothing after the failure"
    assert not after & set(received[h3.name])
    for proc in procs[:2]:
        proc.stop()
