"""Fixtures of the mdns tests: hosts in network namespaces, their processes, the Go toolchain.

Every test that opens an mDNS socket does it inside namespaces made here
(``support.netns``): multicast never reaches the machine's own interfaces.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from mdns_helpers import GO_PROGRAM, HOST_SCRIPT, HostProcess, host_env
from support.netns import Host, Lan, inside, require_netns
from support.process import unavailable

_MACHINE_NETNS = os.stat("/proc/self/ns/net").st_ino


@pytest.fixture(autouse=True)
def _mdns_only_inside_namespaces(monkeypatch: pytest.MonkeyPatch) -> None:
    """Opening mDNS sockets in the machine's own namespace is a test bug: it fails at once."""
    from microbroker_mdns import _net

    opener = _net.open_sockets

    def guarded(interfaces: list[str] | None) -> _net.Sockets:
        if os.stat("/proc/thread-self/ns/net").st_ino == _MACHINE_NETNS:
            raise AssertionError("an mDNS socket in the machine's own network namespace")
        return opener(interfaces)

    monkeypatch.setattr(_net, "open_sockets", guarded)


@pytest.fixture
def lan2() -> Iterator[Lan]:
    """Two hosts on one switch."""
    require_netns()
    lan = Lan(2, tag="t")
    try:
        yield lan
    finally:
        lan.close()


@pytest.fixture
def in_host1(lan2: Lan) -> Iterator[Host]:
    """The test itself runs inside host 1 of ``lan2`` (its sockets are made there)."""
    with inside(lan2.hosts[0]):
        yield lan2.hosts[0]


@pytest.fixture
def start_host(tmp_path: Path) -> Iterator[Callable[[Host], HostProcess]]:
    """Start ``mdns_host.py`` inside a host; every process is stopped at the end."""
    started: list[HostProcess] = []

    def start(host: Host, env: dict[str, str] | None = None) -> HostProcess:
        process = HostProcess(
            host,
            [sys.executable, str(HOST_SCRIPT), host.name, str(tmp_path)],
            host_env(host, env),
        )
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


@pytest.fixture(scope="session")
def go_txt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """gomicro_txt.go built by the Go toolchain (tests/support/install-go.sh installs it)."""
    go = shutil.which("go")
    if go is None:
        unavailable("the Go toolchain is not installed (bash tests/support/install-go.sh)")
    workdir = tmp_path_factory.mktemp("go")
    binary = workdir / "gomicro_txt"
    env = {
        **os.environ,
        "GOCACHE": str(workdir / "cache"),
        "GOPATH": str(workdir / "path"),
        "GOPROXY": "off",
        "GOFLAGS": "",
        "GOTOOLCHAIN": "local",
    }
    subprocess.run(
        [str(go), "build", "-o", str(binary), str(GO_PROGRAM)],
        check=True,
        env=env,
        timeout=600,
        capture_output=True,
    )
    return binary
