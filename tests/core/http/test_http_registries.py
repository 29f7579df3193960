"""The service registries: local (files, between processes) and memory; selection by name."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from support.http_procs import Peer

import microbroker
from microbroker.registries import Node, Registry, RegistryError, Service, get_registry
from microbroker.registries.local import LocalRegistry
from microbroker.registries.memory import MemoryRegistry


def service(name: str = "greeter", version: str = "v1", node: str = "n1") -> Service:
    return Service(name, version, {"owner": "me"}, [Node(node, "127.0.0.1:1", {"k": "v"})])


@pytest.fixture(params=["local", "memory"])
def registry(request: pytest.FixtureRequest, registry_dir: Path) -> Registry:
    if request.param == "local":
        return LocalRegistry(registry_dir)
    return MemoryRegistry(f"test-{id(request)}")


async def test_register_lookup_deregister(registry: Registry) -> None:
    await registry.register(service(node="a"))
    await registry.register(service(node="b"))
    await registry.register(service(version="v2", node="c"))
    found = sorted(await registry.get_service("greeter"), key=lambda s: s.version)
    assert [(s.version, sorted(n.id for n in s.nodes)) for s in found] == [
        ("v1", ["a", "b"]),
        ("v2", ["c"]),
    ]
    assert found[0].metadata == {"owner": "me"}
    assert found[0].nodes[0].metadata == {"k": "v"}
    assert await registry.get_service("nobody") == []
    await registry.deregister(service(node="a"))
    await registry.deregister(service(node="never-registered"))
    found = await registry.get_service("greeter")
    assert sorted(n.id for s in found for n in s.nodes) == ["b", "c"]
    assert {s.name for s in await registry.list_services()} == {"greeter"}


async def test_a_registration_expires_after_its_ttl_unless_renewed(registry: Registry) -> None:
    await registry.register(service(node="short"), ttl=0.3)
    await registry.register(service(node="long"), ttl=60)
    assert len((await registry.get_service("greeter"))[0].nodes) == 2
    await asyncio.sleep(0.2)
    await registry.register(service(node="short"), ttl=0.3)  # the heartbeat
    await asyncio.sleep(0.2)
    assert len((await registry.get_service("greeter"))[0].nodes) == 2
    await asyncio.sleep(0.4)
    (only,) = await registry.get_service("greeter")
    assert [n.id for n in only.nodes] == ["long"]


async def test_watch_reports_nodes_coming_and_going(registry: Registry) -> None:
    events = registry.watch("greeter", interval=0.05)
    await registry.register(service(node="a"))
    first = await asyncio.wait_for(anext(events), 10)
    assert (first.action, first.service.nodes[0].id) == ("create", "a")
    await registry.deregister(service(node="a"))
    second = await asyncio.wait_for(anext(events), 10)
    assert (second.action, second.service.nodes[0].id) == ("delete", "a")
    await events.aclose()  # type: ignore[attr-defined]


async def test_a_process_killed_with_sigkill_drops_out_of_lookups(
    peer: Callable[..., Peer], registry_dir: Path
) -> None:
    proc = peer("register", "victim")  # default TTL: far longer than this test waits
    proc.wait_line("registered")
    registry = LocalRegistry(registry_dir)
    assert [n.id for s in await registry.get_service("victim") for n in s.nodes] == ["victim-node"]
    proc.kill()
    deadline = time.monotonic() + 10
    while await registry.get_service("victim"):
        assert time.monotonic() < deadline, "a dead process's node is still listed"
        await asyncio.sleep(0.1)
    assert not list((registry_dir / "victim").glob("*.json")), "the stale record is removed"


async def test_a_stopped_process_drops_out_when_its_ttl_runs_out(
    peer: Callable[..., Peer], registry_dir: Path
) -> None:
    proc = peer("register", "frozen", "--ttl", "1")
    proc.wait_line("registered")
    os.kill(proc.proc.pid, signal.SIGSTOP)  # alive, but renews nothing: only the TTL can tell
    try:
        registry = LocalRegistry(registry_dir)
        deadline = time.monotonic() + 15
        while await registry.get_service("frozen"):
            assert time.monotonic() < deadline, "an expired node is still listed"
            await asyncio.sleep(0.1)
    finally:
        os.kill(proc.proc.pid, signal.SIGCONT)


def test_the_local_registry_refuses_a_directory_others_can_write(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(RegistryError, match="chmod 700"):
        LocalRegistry(shared)


def test_the_local_registry_creates_its_directory_private(tmp_path: Path) -> None:
    LocalRegistry(tmp_path / "a" / "b")
    assert (tmp_path / "a" / "b").stat().st_mode & 0o777 == 0o700


def test_damaged_records_are_ignored(registry_dir: Path) -> None:
    registry = LocalRegistry(registry_dir)
    asyncio.run(registry.register(service(node="good")))
    (registry_dir / "greeter" / "junk.json").write_text("{not json")
    (found,) = asyncio.run(registry.get_service("greeter"))
    assert [n.id for n in found.nodes] == ["good"]


def test_registries_are_selected_by_name_and_environment(
    monkeypatch: pytest.MonkeyPatch, registry_dir: Path
) -> None:
    assert {"local", "memory"} <= set(microbroker.available("registry"))
    monkeypatch.setenv("MICRO_REGISTRY", "memory")
    assert isinstance(get_registry(), MemoryRegistry)
    monkeypatch.setenv("MICRO_REGISTRY", "local")
    monkeypatch.setenv("MICRO_REGISTRY_ADDRESS", str(registry_dir))
    chosen = get_registry()
    assert isinstance(chosen, LocalRegistry)
    assert chosen.directory == registry_dir
    with pytest.raises(microbroker.PluginNotFound, match="memory"):
        get_registry("memroy")
