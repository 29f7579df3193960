"""Hosts on one machine: network namespaces joined by veth pairs to a bridge in its own namespace.

A :class:`Lan` is a switch namespace holding a bridge and one veth pair per
host namespace (``eth0`` in the host, ``pN`` on the bridge), with addresses
in ``10.213.0.0/24``. Nothing is attached to the machine's own interfaces and
no namespace has a route out, so every packet (mDNS multicast included)
stays inside the namespaces the test made. It needs root and iproute2's
``ip``; :func:`require_netns` says why not, failing in CI and skipping elsewhere.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from support.process import unavailable

SUBNET = "10.213.0"
"""The /24 the hosts live in. It exists only inside the test's namespaces."""

_CLONE_NEWNET = 0x40000000


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", *args],
        capture_output=True,
        text=True,
        check=check,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )


def netns_problem() -> str | None:
    """Why namespaces cannot be made here, or ``None`` when they can."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "network namespaces need root (tests of several hosts build them with ip netns)"
    if shutil.which("ip") is None:
        return "iproute2's ip is not installed (apt-get install iproute2)"
    probe = f"mbprobe{os.getpid()}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"ip netns add failed: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


def require_netns() -> None:
    """Fail in CI, skip elsewhere, when namespaces cannot be made."""
    problem = netns_problem()
    if problem is not None:
        unavailable(problem)


@dataclass(slots=True)
class Host:
    """One host of a :class:`Lan`: a namespace with ``lo`` and ``eth0``."""

    name: str
    """The namespace name."""
    address: str
    """``eth0``'s IPv4 address."""
    port: str
    """The host's veth end on the bridge (in the switch namespace)."""

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside this host's namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, *argv: str) -> str:
        """Run a command in the namespace and return its output."""
        done = subprocess.run(
            self.exec_argv(argv), capture_output=True, text=True, check=True, timeout=30
        )
        return done.stdout


class Lan:
    """A switch and ``count`` hosts; :meth:`close` removes every namespace it made."""

    def __init__(self, count: int, *, tag: str = "lan") -> None:
        self.prefix = f"mb{tag}{os.getpid()}"
        self.switch = f"{self.prefix}sw"
        self.hosts: list[Host] = []
        self._made: list[str] = []
        try:
            self._add_ns(self.switch)
            _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.switch, "link", "set", "br0", "up")
            for index in range(1, count + 1):
                self.add_host(index)
        except BaseException:
            self.close()
            raise

    def _add_ns(self, name: str) -> None:
        _ip("netns", "del", name, check=False)  # a leftover of a killed run
        _ip("netns", "add", name)
        self._made.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def add_host(self, index: int) -> Host:
        """Add host ``index`` (address ``SUBNET.<index>``), plugged into the switch."""
        name = f"{self.prefix}h{index}"
        port = f"p{index}"
        self._add_ns(name)
        _ip(
            "-n",
            self.switch,
            "link",
            "add",
            port,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            name,
        )
        _ip("-n", self.switch, "link", "set", port, "master", "br0")
        _ip("-n", self.switch, "link", "set", port, "up")
        address = f"{SUBNET}.{index}"
        _ip("-n", name, "addr", "add", f"{address}/24", "dev", "eth0")
        _ip("-n", name, "link", "set", "eth0", "up")
        host = Host(name, address, port)
        self.hosts.append(host)
        return host

    def unplug(self, host: Host) -> None:
        """Delete the host's link: both veth ends go, the host is cut off from the others."""
        _ip("-n", self.switch, "link", "del", host.port, check=False)

    def interfaces(self, host: Host) -> list[str]:
        """The interface names inside ``host`` (to show nothing else is there)."""
        out = _ip("-n", host.name, "-o", "link", "show").stdout
        return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]

    def close(self) -> None:
        """Delete the namespaces (processes still inside keep theirs until they exit)."""
        for name in reversed(self._made):
            _ip("netns", "del", name, check=False)
        self._made.clear()


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def inside(host: Host) -> Iterator[None]:
    """Run the calling thread inside ``host``'s namespace: sockets it opens belong there.

    For a test that runs a registry in the test process itself; every socket
    must be closed before the block ends (they would otherwise stay in the namespace).
    """
    original = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{host.name}", os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(original)
    finally:
        os.close(target)
        os.close(original)
