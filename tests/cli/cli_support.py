"""Running the ``microbroker`` console script as a user does: a subprocess, its real output."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]
GREETER = REPO / "examples" / "greeter"


def script() -> str:
    """The installed console script next to this interpreter (``pip install microbroker``)."""
    path = BIN / ("microbroker.exe" if os.name == "nt" else "microbroker")
    if not path.exists():
        pytest.fail(f"the microbroker console script is not installed at {path}", pytrace=False)
    return str(path)


def environment(registry_dir: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The user's environment, with the broker unselected and a private http registry."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICRO_")}
    env["MICRO_REGISTRY_ADDRESS"] = str(registry_dir)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


class Cli:
    """Runs ``microbroker`` with one private environment per test."""

    def __init__(self, registry_dir: Path) -> None:
        self.env = environment(registry_dir)

    def run(
        self,
        *args: str,
        input: bytes | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = 60,
        cwd: Path | None = None,
    ) -> Result:
        proc = subprocess.run(
            [script(), *args],
            input=input if input is not None else b"",
            capture_output=True,
            env={**self.env, **(env or {})},
            timeout=timeout,
            cwd=cwd,
        )
        return Result(args, proc.returncode, proc.stdout.decode(), proc.stderr.decode())

    def start(
        self, *args: str, env: Mapping[str, str] | None = None, cwd: Path | None = None
    ) -> Background:
        return Background([script(), *args], {**self.env, **(env or {})}, cwd)

    def start_python(self, *args: str, cwd: Path | None = None) -> Background:
        """A Python program (a service) with the same environment."""
        return Background([sys.executable, *args], dict(self.env), cwd)


class Result:
    """A finished command: exit code, stdout and stderr as text."""

    def __init__(self, args: tuple[str, ...], code: int, out: str, err: str) -> None:
        self.args, self.code, self.out, self.err = args, code, out, err

    def __repr__(self) -> str:
        command = " ".join(self.args)
        return f"microbroker {command} -> {self.code}\nstdout:\n{self.out}\nstderr:\n{self.err}"


class Background:
    """A command left running (``subscribe``, a service); its output is read as it comes."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path | None = None) -> None:
        self.argv = argv
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            text=True,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self._changed = threading.Condition()
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: object, into: list[str]) -> None:
        for line in stream:  # type: ignore[attr-defined]
            with self._changed:
                into.append(line)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def stdout(self) -> str:
        with self._changed:
            return "".join(self.out)

    @property
    def stderr(self) -> str:
        with self._changed:
            return "".join(self.err)

    def wait_for(self, predicate: Callable[[], bool], what: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.proc.poll() is not None:
                    self._changed.release()
                    try:
                        for reader in self._readers:
                            reader.join(1)
                    finally:
                        self._changed.acquire()
                    if predicate():
                        return
                    raise AssertionError(
                        f"{' '.join(self.argv[1:])}: {what} did not happen within {timeout}s "
                        f"(exit code {self.proc.poll()})\nstdout:\n{''.join(self.out)}\n"
                        f"stderr:\n{''.join(self.err)}"
                    )
                self._changed.wait(min(remaining, 0.2))

    def wait_stderr(self, text: str, timeout: float = 30) -> None:
        self.wait_for(lambda: text in "".join(self.err), f"{text!r} on stderr", timeout)

    def wait_stdout(self, text: str, timeout: float = 30) -> None:
        self.wait_for(lambda: text in "".join(self.out), f"{text!r} on stdout", timeout)

    def finish(self, timeout: float = 30) -> int:
        """Wait for the command to end by itself; its exit code."""
        code = self.proc.wait(timeout)
        for reader in self._readers:
            reader.join(5)
        return code

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for reader in self._readers:
            reader.join(5)
