"""The ``local`` registry against another local user (issue 19): nothing intercepted, no lock-out.

The tests run as root and fork an attacker of another uid (``support.other_user``)
that does what the issue describes: it creates ``<tmp>/microbroker-<uid>``
first with mode 0777, renames ``registry/``, plants nodes that point at its
own HTTP server, and plants symbolic links. Each test has a ``<tmp>`` of its
own (a sticky, world-writable directory, as ``/tmp`` is, through ``TMPDIR``)
and a home of its own, so that nothing touches the real ``/tmp/microbroker-0``.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.http_procs import Peer
from support.other_user import UID, OtherUser, can_switch_users

import microbroker
from microbroker.registries import Node, RegistryError, Service
from microbroker.registries.local import LocalRegistry

SERVICE = "micro.http.broker"
BROADCAST = "ff.http.broadcast"


@dataclass
class Sandbox:
    base: Path
    """This test's ``<tmp>``: owned by root, mode 1777."""
    home: Path
    primary: Path
    """The default directory: ``<tmp>/microbroker-<uid>/registry``."""
    fallback: Path
    """Where the documentation says the registry goes when the default is unsafe."""

    @property
    def squat(self) -> Path:
        """``<tmp>/microbroker-<uid>``, the directory the attacker creates first."""
        return self.primary.parent


@pytest.fixture
def sandbox(monkeypatch: pytest.MonkeyPatch) -> Iterator[Sandbox]:
    base = Path(tempfile.mkdtemp(prefix="microbroker-security-", dir=tempfile.gettempdir()))
    try:
        base.chmod(0o1777)
        home = base / "home"
        home.mkdir(mode=0o700)
        monkeypatch.setenv("TMPDIR", str(base))
        monkeypatch.setenv("HOME", str(home))
        monkeypatch.setenv("MICRO_REGISTRY", "local")
        monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
        monkeypatch.delenv("MICRO_REGISTRY_ADDRESS", raising=False)
        monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() reads TMPDIR again
        yield Sandbox(
            base=base,
            home=home,
            primary=base / f"microbroker-{os.getuid()}" / "registry",
            fallback=home / ".cache" / "microbroker" / f"registry-{socket.gethostname()}",
        )
    finally:
        shutil.rmtree(base)


@pytest.fixture
def attacker() -> Iterator[OtherUser]:
    if not can_switch_users():
        message = "the registry security tests fork a second uid: run them as root"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    user = OtherUser()
    yield user
    user.stop()


def real_node(topic: str = "orders", node: str = "real") -> Service:
    return Service(
        SERVICE, BROADCAST, {}, [Node(node, "127.0.0.1:1", {"broker": "http", "topic": topic})]
    )


def node_ids(services: list[Service]) -> list[str]:
    return sorted(n.id for s in services for n in s.nodes)


def swap_registry(attacker: OtherUser, parent: Path, *topics: tuple[str, str]) -> None:
    """The issue's attack: rename ``registry/`` away, put one of the attacker's in its place,
    with the attacker's nodes for ``(topic, version)`` in it."""
    if (parent / "registry").exists():
        attacker.do("rename", src=parent / "registry", dst=parent / "registry.old")
    attacker.mkdir(parent / "registry")
    for topic, version in topics or (("orders", BROADCAST),):
        attacker.plant(parent / "registry" / SERVICE, topic, version=version)


# The registry on its own -----------------------------------------------------------


async def test_a_parent_directory_squatted_by_another_user_is_not_trusted(
    sandbox: Sandbox, attacker: OtherUser, caplog: pytest.LogCaptureFixture
) -> None:
    attacker.mkdir(sandbox.squat, 0o777)
    caplog.set_level(logging.WARNING, "microbroker.registries.local")
    registry = LocalRegistry()
    await registry.register(real_node())
    swap_registry(attacker, sandbox.squat)

    assert node_ids(await registry.get_service(SERVICE)) == ["real"], "a planted node was returned"
    assert registry.directory == sandbox.fallback
    assert str(sandbox.squat) in caplog.text
    assert f"uid {UID}" in caplog.text
    # A process started after the swap is not locked out: it finds the same directory.
    later = LocalRegistry()
    assert later.directory == sandbox.fallback
    assert node_ids(await later.get_service(SERVICE)) == ["real"]


async def test_processes_of_one_user_agree_on_the_fallback_after_the_squatter_leaves(
    sandbox: Sandbox, attacker: OtherUser
) -> None:
    attacker.mkdir(sandbox.squat, 0o777)
    first = LocalRegistry()
    await first.register(real_node(node="first"))
    attacker.do("rmdir", path=sandbox.squat)  # the default is free again...
    second = LocalRegistry()
    # ...but the fallback exists: every process keeps to it, so that they still meet.
    assert second.directory == sandbox.fallback
    assert node_ids(await second.get_service(SERVICE)) == ["first"]
    assert not sandbox.squat.exists()


def test_with_no_safe_directory_the_error_says_what_happened_and_what_to_do(
    sandbox: Sandbox, attacker: OtherUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    attacker.mkdir(sandbox.squat, 0o777)
    their_home = sandbox.base / "their-home"
    attacker.mkdir(their_home, 0o755)
    monkeypatch.setenv("HOME", str(their_home))  # no safe fallback either
    with pytest.raises(RegistryError) as refused:
        LocalRegistry()
    message = str(refused.value)
    for part in (str(sandbox.squat), str(their_home), f"uid {UID}", "mode 0777"):
        assert part in message
    assert "XDG_RUNTIME_DIR" in message
    assert "MICRO_REGISTRY_ADDRESS" in message
    assert not (sandbox.squat / "registry").exists()


async def test_an_address_inside_another_users_directory_is_refused(
    sandbox: Sandbox, attacker: OtherUser
) -> None:
    shared = sandbox.base / "shared"
    attacker.mkdir(shared, 0o777)
    with pytest.raises(RegistryError) as refused:
        LocalRegistry(shared / "registry")
    message = str(refused.value)
    for part in (str(shared), f"uid {UID}", "mode 0777", "MICRO_REGISTRY_ADDRESS"):
        assert part in message
    assert not (shared / "registry").exists(), "nothing is created in the other user's directory"


async def test_a_symbolic_link_of_another_user_is_not_followed(
    sandbox: Sandbox, attacker: OtherUser
) -> None:
    theirs = sandbox.base / "theirs"
    attacker.mkdir(theirs, 0o777)
    attacker.do("symlink", target=theirs, path=sandbox.squat)
    registry = LocalRegistry()
    await registry.register(real_node())
    swap_registry(attacker, theirs)
    assert node_ids(await registry.get_service(SERVICE)) == ["real"], "a planted node was returned"
    assert registry.directory == sandbox.fallback

    attacker.do("symlink", target=theirs, path=sandbox.base / "link")
    with pytest.raises(RegistryError, match=f"symbolic link of uid {UID}"):
        LocalRegistry(sandbox.base / "link" / "registry")


async def test_a_registry_directory_replaced_after_start_is_refused(
    sandbox: Sandbox, attacker: OtherUser
) -> None:
    address = sandbox.base / "registry"
    registry = LocalRegistry(address)
    await registry.register(real_node())
    shutil.rmtree(address)  # as a cleaner of /tmp removes a directory left unused for days
    attacker.mkdir(address, 0o777)
    attacker.plant(address / SERVICE, "orders")

    refusal = re.escape(str(address)) + f".*uid {UID}.*MICRO_REGISTRY_ADDRESS"
    with pytest.raises(RegistryError, match=refusal):
        await registry.get_service(SERVICE)
    with pytest.raises(RegistryError, match=refusal):
        await registry.register(real_node())
    with pytest.raises(RegistryError, match=refusal):
        LocalRegistry(address)


async def test_the_default_registry_moves_to_the_fallback_when_replaced_after_start(
    sandbox: Sandbox, attacker: OtherUser
) -> None:
    registry = LocalRegistry()
    assert registry.directory == sandbox.primary
    await registry.register(real_node())
    shutil.rmtree(sandbox.squat)  # a cleaner of /tmp again; then the other user is first
    attacker.mkdir(sandbox.squat, 0o777)
    swap_registry(attacker, sandbox.squat)

    assert node_ids(await registry.get_service(SERVICE)) == ["real"], "a planted node was returned"
    assert registry.directory == sandbox.fallback, "it moved, and took its own node along"
    later = LocalRegistry()
    assert later.directory == sandbox.fallback
    assert node_ids(await later.get_service(SERVICE)) == ["real"]


async def test_entries_of_another_user_inside_the_registry_are_not_trusted(
    sandbox: Sandbox, attacker: OtherUser, caplog: pytest.LogCaptureFixture
) -> None:
    # A directory that was open to everyone for a while, then closed with chmod 700.
    address = sandbox.base / "was-open"
    address.mkdir()
    address.chmod(0o777)
    attacker.plant(address / SERVICE, "orders")  # a <service>/ directory of theirs
    elsewhere = sandbox.base / "elsewhere"
    attacker.mkdir(elsewhere, 0o777)
    attacker.plant(elsewhere, "orders", service="linked", version="v1")
    attacker.do("symlink", target=elsewhere, path=address / "linked")
    (address / "shared").mkdir()
    (address / "shared").chmod(0o777)
    attacker.plant(address / "shared", "orders", service="shared", version="v1")
    (address / "shared").chmod(0o700)
    address.chmod(0o700)

    caplog.set_level(logging.WARNING, "microbroker.registries.local")
    registry = LocalRegistry(address)
    await registry.register(Service("shared", "v1", {}, [Node("real", "127.0.0.1:1")]))
    with pytest.raises(RegistryError, match=re.escape(str(address / SERVICE)) + f".*uid {UID}"):
        await registry.get_service(SERVICE)
    with pytest.raises(RegistryError, match="symbolic link"):
        await registry.get_service("linked")
    assert node_ids(await registry.get_service("shared")) == ["real"]
    assert f"uid {UID}" in caplog.text, "the ignored record is reported"


# Real http brokers -------------------------------------------------------------------


@pytest.fixture
async def brokers() -> AsyncIterator[Callable[..., microbroker.Broker]]:
    made: list[microbroker.Broker] = []

    def make(**options: object) -> microbroker.Broker:
        broker = microbroker.get_broker("http", **options)
        made.append(broker)
        return broker

    yield make
    for broker in reversed(made):
        await broker.disconnect()


async def test_no_message_reaches_another_user_who_squats_the_registry(
    sandbox: Sandbox, attacker: OtherUser, brokers: Callable[..., microbroker.Broker]
) -> None:
    """The issue's measurement, in process: 0 messages intercepted, and no lock-out."""
    attacker.mkdir(sandbox.squat, 0o777)
    got: dict[str, list[str]] = {"orders": [], "invoices": [], "late": []}

    def recorder(topic: str) -> Callable[[microbroker.Delivery], Awaitable[None]]:
        async def handler(delivery: microbroker.Delivery) -> None:
            got[topic].append(delivery.message.body.decode())

        return handler

    subscriber = brokers()  # the default registry, as an application gets it
    await subscriber.connect()
    await subscriber.subscribe("orders", recorder("orders"))
    await subscriber.subscribe("invoices", recorder("invoices"), queue="billing")
    # A publisher that looks the nodes up before every message sees a swap at once.
    publisher = brokers(registry=LocalRegistry(liveness_interval=0), lookup_interval=0)
    await publisher.connect()

    async def publish(topic: str, bodies: range) -> None:
        for i in bodies:
            await publisher.publish(topic, microbroker.Message(str(i).encode()), confirm=True)

    await publish("orders", range(10))
    await publish("invoices", range(10))
    swap_registry(attacker, sandbox.squat, ("orders", BROADCAST), ("invoices", "billing"))
    await publish("orders", range(10, 30))
    await publish("invoices", range(10, 30))
    attacker.sync()
    assert attacker.received == [], f"{len(attacker.received)} of 40 messages intercepted"
    assert got["orders"] == [str(i) for i in range(30)]
    assert sorted(got["invoices"], key=int) == [str(i) for i in range(30)]

    # Processes started after the swap are not refused.
    late_subscriber = brokers()
    await late_subscriber.connect()
    await late_subscriber.subscribe("late", recorder("late"))
    late_publisher = brokers()
    await late_publisher.connect()
    for i in range(5):
        await late_publisher.publish("late", microbroker.Message(str(i).encode()), confirm=True)

    attacker.sync()
    assert attacker.received == []
    assert got["late"] == [str(i) for i in range(5)]


def test_processes_started_after_a_squat_talk_and_the_squatter_hears_nothing(
    sandbox: Sandbox, attacker: OtherUser, peer: Callable[..., Peer]
) -> None:
    attacker.mkdir(sandbox.squat, 0o777)
    default = {"MICRO_REGISTRY_ADDRESS": ""}  # the default directory, not the test fixture's
    subscriber = peer("sub", "news", env=default)
    subscriber.wait_line("ready")
    swap_registry(attacker, sandbox.squat, ("news", BROADCAST))
    publisher = peer("pub", "news", "20", "--wait", env=default)
    publisher.wait_line("done")
    subscriber.wait_deliveries(20)
    attacker.sync()
    assert attacker.received == [], f"{len(attacker.received)} messages intercepted"
    assert subscriber.bodies() == [str(i) for i in range(20)]
