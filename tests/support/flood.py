"""A connection flood, as a process: ``python flood.py HOST PORT COUNT [--partial N]``.

It holds COUNT TCP connections to HOST:PORT that send nothing (and, with
``--partial N``, N more that send the start of a request head and then
nothing: a slowloris), and opens a new one whenever the server closes one,
as an attacker would. It needs no node id and no secret. It prints
``holding`` once every connection was opened at least once, then a JSON line
of counts every half second (``opened``, ``closed`` by the server, ``failed``
to connect), and stops when its stdin closes.

:class:`Flood` starts it from a test. It raises its own open-file limit to
what it needs (it fails with a clear message when the hard limit is too low).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

_PARTIAL_HEAD = b"POST /?id=x HTTP/1.1\r\nHost: flood\r\n"


class _Counts:
    def __init__(self) -> None:
        self.opened = 0
        self.closed = 0
        self.failed = 0


async def _hold(host: str, port: int, partial: bool, counts: _Counts) -> None:
    while True:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
        except (OSError, TimeoutError):
            counts.failed += 1
            await asyncio.sleep(0.05)
            continue
        counts.opened += 1
        try:
            if partial:
                writer.write(_PARTIAL_HEAD)
            await reader.read(65536)  # b"" once the server closes: then come back
            while await reader.read(65536):
                pass
        except OSError:
            pass
        counts.closed += 1
        writer.close()


async def _main(host: str, port: int, idle: int, partial: int) -> None:
    counts = _Counts()
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    tasks = [loop.create_task(_hold(host, port, False, counts)) for _ in range(idle)]
    tasks += [loop.create_task(_hold(host, port, True, counts)) for _ in range(partial)]
    stop = loop.create_task(stdin.read())
    said_holding = False
    while not stop.done():
        if not said_holding and counts.opened >= idle + partial:
            print("holding", flush=True)
            said_holding = True
        print(json.dumps(vars(counts)), flush=True)
        await asyncio.wait([stop], timeout=0.5)
    for task in tasks:
        task.cancel()


def main() -> None:
    import argparse
    import resource

    parser = argparse.ArgumentParser()
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("count", type=int)
    parser.add_argument("--partial", type=int, default=0)
    args = parser.parse_args()
    need = args.count + args.partial + 64
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            print(f"error: the flood needs {need} open files, the hard limit is {hard}", flush=True)
            sys.exit(2)
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    asyncio.run(_main(args.host, args.port, args.count, args.partial))


class Flood:
    """The flood process, started from a test; its count lines are collected as they come."""

    def __init__(self, host: str, port: int, count: int, *, partial: int = 0) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__)),
                host,
                str(port),
                str(count),
                "--partial",
                str(partial),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()

    def wait_holding(self, timeout: float = 60.0) -> None:
        """Wait until every connection was opened once; fail with the flood's output."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while "holding" not in self.lines:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        f"the flood did not open its connections: {self.lines[-5:]}"
                    )
                self._changed.wait(0.2)

    @property
    def counts(self) -> dict[str, int]:
        """The latest counts: opened, closed (by the server), failed (to connect)."""
        with self._changed:
            for line in reversed(self.lines):
                if line.startswith("{"):
                    counts: dict[str, int] = json.loads(line)
                    return counts
        return {"opened": 0, "closed": 0, "failed": 0}

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


if __name__ == "__main__":
    main()
