"""Processes for the http broker tests: peers started with a private registry, read line by line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

PEER = Path(__file__).with_name("http_peer.py")


class Peer:
    """A ``http_peer.py`` process; its stdout lines are collected as they come."""

    def __init__(self, registry_dir: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self.proc = subprocess.Popen(
            [sys.executable, str(PEER), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env={
                **os.environ,
                "MICRO_REGISTRY": "local",
                "MICRO_REGISTRY_ADDRESS": str(registry_dir),
                "MICRO_BROKER": "http",
                **(env or {}),
            },
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._stderr: list[str] = []
        self.stderr_bytes = 0
        """Bytes the process wrote to stderr so far (its log)."""
        threading.Thread(target=self._read_err, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_bytes += len(line.encode())
            self._stderr.append(line)
            if len(self._stderr) > 1000:
                del self._stderr[:500]  # a log flood must not fill the test's memory

    @property
    def stderr(self) -> str:
        return "".join(self._stderr[-60:])

    def wait_for(self, predicate: Callable[[list[str]], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(self.lines):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.proc.poll() is not None and not predicate(self.lines)):
                    if self.proc.poll() is not None:
                        self._reader.join(1)
                        if predicate(self.lines):
                            return
                    raise AssertionError(
                        f"{' '.join(self.args)}: {what} did not happen within {timeout}s "
                        f"(exit code {self.proc.poll()}); output: {self.lines[-10:]}\n"
                        f"stderr: {self.stderr}"
                    )
                self._changed.wait(min(remaining, 0.2))

    def wait_line(self, line: str, timeout: float = 30.0) -> None:
        self.wait_for(lambda lines: line in lines, timeout, repr(line))

    @property
    def deliveries(self) -> list[dict[str, Any]]:
        with self._changed:
            return [json.loads(x) for x in self.lines if x.startswith("{")]

    def bodies(self) -> list[str]:
        return [d["body"] for d in self.deliveries]

    def wait_deliveries(self, count: int, timeout: float = 30.0) -> None:
        self.wait_for(
            lambda lines: sum(x.startswith("{") for x in lines) >= count,
            timeout,
            f"{count} deliveries",
        )

    def kill(self) -> None:
        """kill -9."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(2)
        return self.proc.returncode

    def wait(self, timeout: float = 60.0) -> int:
        return self.proc.wait(timeout)
