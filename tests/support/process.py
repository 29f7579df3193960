"""Real server processes for the tests: free loopback ports, start, stop, kill, pause, restart.

Each transport's fixture module (``support/nats_server.py`` and so on) builds
on :class:`ServerProcess`. Servers are never mocked: a test that needs a
server which cannot be started fails under CI (``CI`` set) and skips locally.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

HOST = "127.0.0.1"


def wait_stopped(pid: int, timeout: float = 10.0) -> None:
    """Wait until every thread of ``pid`` is stopped (after a SIGSTOP).

    ``kill()`` returns before the signal has stopped the process: a thread
    running on another core goes on for a moment and may still answer what the
    test sends right after pausing (a JetStream ack, say). Read from
    ``/proc/<pid>/task/*/stat``; a thread that exits meanwhile is not waited on.
    """
    deadline = time.monotonic() + timeout
    tasks = Path(f"/proc/{pid}/task")
    while True:
        states = []
        with contextlib.suppress(FileNotFoundError):
            for task in tasks.iterdir():
                with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                    stat = (task / "stat").read_text()
                    # "<tid> (<comm>) <state> ...": comm may hold spaces or parentheses.
                    states.append(stat[stat.rindex(")") + 2])
        if all(state in "tTZX" for state in states):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"process {pid} did not stop within {timeout}s: {states}")
        time.sleep(0.001)


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports that nothing listens on right now."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((HOST, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def port_open(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def unavailable(reason: str) -> None:
    """Fail under CI, skip elsewhere: a missing server is never a silent pass in CI."""
    if os.environ.get("CI"):
        pytest.fail(f"required server unavailable in CI: {reason}", pytrace=False)
    pytest.skip(reason)


def find_binary(name: str, *candidates: str | None) -> str | None:
    """The first existing executable among ``candidates``, else ``name`` on PATH."""
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return shutil.which(name)


class ServerProcess:
    """A server started as a child process on a fixed port, restartable on that same port.

    ``argv_for(port)`` builds the command line; the server is ready when its
    port accepts connections (and ``ready()`` returns true, when given).
    """

    def __init__(
        self,
        name: str,
        argv_for: Callable[[int], Sequence[str]],
        *,
        port: int | None = None,
        ready: Callable[[], bool] | None = None,
        start_timeout: float = 30.0,
        workdir: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.port = port or free_port()
        self._argv_for = argv_for
        self._ready = ready
        self.start_timeout = start_timeout
        # A work directory made here is removed by close(); one given is the caller's.
        self._owns_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix=f"microbroker-{name}-"))
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / f"{name}.log"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        if self.running:
            return
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            list(self._argv_for(self.port)),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.workdir,
            env={**os.environ, **(self.env or {})},
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode} while starting:\n{self.log()}"
                )
            if port_open(self.port) and (self._ready is None or self._ready()):
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} did not listen on port {self.port} in time:\n{self.log()}")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop gracefully (SIGTERM), then SIGKILL after ``timeout``."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGCONT)
                proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.proc = None
        self._wait_port_closed()

    def kill(self) -> None:
        """kill -9: no chance to flush or say goodbye."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        self.proc = None
        self._wait_port_closed()

    def pause(self) -> None:
        """SIGSTOP: the process keeps its sockets but answers nothing (a network stall)."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGSTOP)
            wait_stopped(self.proc.pid)

    def resume(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)

    def restart(self, *, hard: bool = False) -> None:
        """Stop (or kill, with ``hard``) and start again on the same port."""
        if hard:
            self.kill()
        else:
            self.stop()
        self.start()

    def _wait_port_closed(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while port_open(self.port) and time.monotonic() < deadline:
            time.sleep(0.05)

    def log(self, tail: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def close(self) -> None:
        """Stop the server and remove the work directory made for it (its data and log)."""
        self.stop()
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __exit__(self, *exc: object) -> None:
        self.close()
