"""The plugin as users meet it: selection by name and environment, options, the http broker."""

from __future__ import annotations

import asyncio
from importlib import metadata
from pathlib import Path

import pytest
from support.netns import Host

import microbroker
from microbroker.registries import get_registry
from microbroker_mdns import MdnsOptions, MdnsRegistry, instance_label


def test_entry_point_and_selection_by_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    points = metadata.entry_points(group="microbroker")
    assert any(ep.name == "mdns" and ep.value == "microbroker_mdns.plugin" for ep in points)
    monkeypatch.setenv("MICRO_REGISTRY", "mdns")
    monkeypatch.setenv("MICRO_REGISTRY_ADDRESS", "eth0, 10.0.0.2")
    monkeypatch.setenv("MICRO_MDNS_REFRESH_INTERVAL", "0.5")
    monkeypatch.setenv("MICRO_MDNS_MAX_MISSED", "2")
    registry = get_registry()
    assert isinstance(registry, MdnsRegistry)
    assert str(registry) == "mdns"
    assert registry.options.interfaces == ["eth0", "10.0.0.2"]
    assert registry.options.refresh_interval == 0.5
    assert registry.options.max_missed == 2
    assert registry.ttl == 120  # go-micro's record TTL, which the http broker renews at a third


def test_arguments_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MICRO_MDNS_DOMAIN", "lab")
    monkeypatch.setenv("MICRO_MDNS_INTERFACES", "eth1")
    options = MdnsOptions.from_arguments({"domain": "micro", "timeout": 0.5})
    assert options.domain == "micro"
    assert options.timeout == 0.5
    assert options.interfaces == ["eth1"]


@pytest.mark.parametrize(
    ("arguments", "error", "match"),
    [
        ({"colour": "red"}, TypeError, "colour"),
        ({"address": "eth0", "interfaces": ["eth1"]}, ValueError, "not both"),
        ({"domain": "a..b"}, ValueError, "domain"),
        ({"ttl": 0}, ValueError, "ttl"),
        ({"max_missed": 0}, ValueError, "max_missed"),
        ({"refresh_interval": 0}, ValueError, "refresh_interval"),
    ],
)
def test_bad_options_say_which(arguments: dict[str, object], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        MdnsOptions.from_arguments(arguments, environ={})


def test_a_bad_environment_number_names_the_variable() -> None:
    with pytest.raises(ValueError, match="MICRO_MDNS_TIMEOUT"):
        MdnsOptions.from_arguments({}, environ={"MICRO_MDNS_TIMEOUT": "soon"})


def test_instance_names() -> None:
    assert instance_label("orders-1", "micro.http.broker", "micro") == (
        "orders-1.micro.http.broker.micro.",
        False,
    )
    name, fallback = instance_label("x" * 64, "micro.http.broker", "micro")
    assert fallback
    assert name.startswith("mb-")
    assert len(name.split(".")[0]) <= 63


def test_an_address_that_is_not_an_ip_is_refused() -> None:
    from microbroker.registries import Node, RegistryError, Service

    registry = MdnsRegistry()

    async def register(address: str) -> None:
        registry._state = object()  # type: ignore[assignment]  # no sockets needed to refuse
        try:
            await registry.register(Service("s", "v", {}, [Node("n", address)]))
        finally:
            registry._state = None

    for address, why in (
        ("myhost:80", "IP address"),
        ("0.0.0.0:80", "unspecified"),
        ("1.2.3.4", "host:port"),
    ):
        with pytest.raises(RegistryError, match=why):
            asyncio.run(register(address))


async def test_http_broker_across_two_hosts(
    lan2: object, in_host1: Host, start_host: object, tmp_path: Path
) -> None:
    """This process (host 1) publishes to a subscriber process on host 2 found by mDNS alone."""
    from mdns_helpers import HostProcess, wait_nodes
    from support.netns import Lan

    assert isinstance(lan2, Lan)
    assert callable(start_host)
    peer: HostProcess = start_host(lan2.hosts[1])
    peer.wait_for(lambda e: e["event"] == "ready", "ready")
    broker = microbroker.get_broker("http", address=f"{in_host1.address}:0", registry="mdns")
    got: list[bytes] = []

    async def handler(delivery: microbroker.Delivery) -> None:
        got.append(delivery.message.body)

    async with broker:
        registry = broker.registry  # type: ignore[attr-defined]
        await broker.subscribe("news", handler)
        # The peer's news subscription and ours: both must accept.
        await wait_nodes(registry, lambda nodes: len(nodes) == 3, "the peer's two subscriptions")
        await broker.publish("news", microbroker.Message(b"from-h1"), confirm=True)
        await broker.publish("jobs", microbroker.Message(b"h1-job"), confirm=True)
        assert got == [b"from-h1"]
        assert registry.interfaces == sorted([in_host1.address, "127.0.0.1"])
    # disconnect() closed the registry it made: no sockets left open, nothing answered.
    assert registry.interfaces == []
    peer.send("quit")
    peer.wait_for(lambda e: e["event"] == "stopped", "peer stopped")
    name = lan2.hosts[1].name
    assert (tmp_path / f"{name}.jobs").read_text() == "h1-job\n"
    assert (tmp_path / f"{name}.news").read_text() == "from-h1\n"


async def test_a_registry_given_to_the_broker_is_left_open(in_host1: Host) -> None:
    """disconnect() closes only a registry the broker made itself (from a name or the env)."""
    registry = MdnsRegistry()
    broker = microbroker.get_broker("http", address=f"{in_host1.address}:0", registry=registry)
    try:
        async with broker:
            await broker.subscribe("t", _ignore)
        assert registry.interfaces  # still open: it is the caller's
    finally:
        await registry.close()
    assert registry.interfaces == []


def test_opening_outside_a_namespace_is_caught() -> None:
    """The guard of conftest.py: this test runs in the machine's namespace."""
    with pytest.raises(AssertionError, match="own network namespace"):
        asyncio.run(MdnsRegistry().open())


async def _ignore(delivery: microbroker.Delivery) -> None:
    pass
