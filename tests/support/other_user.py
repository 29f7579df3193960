"""A process of another local user, to attack what the tests run as root.

The process is forked from the test process and drops to another uid with
``setgroups([])``, ``setgid`` and ``setuid``; it does not exec, because the
interpreter may live where that uid cannot read it (pyenv under ``/root``).
Forked from a process with threads, it touches only what was imported before
the fork, runs no thread, and leaves with ``os._exit``. It closes every file
descriptor it inherited except its two pipes, so it holds nothing of the
test's (no open registry directory) and can do only what its uid may.

It does what the test tells it on the file system (``mkdir``, ``rename``,
``rmdir``, ``symlink``, ``plant`` a registry record pointing at itself) and serves HTTP
on a loopback port, answering 200 to every POST and reporting each message
it receives: the messages it intercepted.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

UID = 47123
"""The attacker's uid and gid: one no account on a test machine uses."""


def can_switch_users() -> bool:
    """Only root can fork a process of another uid."""
    return hasattr(os, "fork") and os.geteuid() == 0


class OtherUser:
    """A forked process of uid :data:`UID`. ``do(op, ...)`` runs one file system action in it."""

    def __init__(self, uid: int = UID) -> None:
        self.uid = uid
        self.received: list[str] = []
        """Bodies of the messages its HTTP server received (its interceptions)."""
        self._replies: list[dict[str, Any]] = []
        self._changed = threading.Condition()
        cmd_r, cmd_w = os.pipe()
        out_r, out_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child, which never returns
            code = 1
            try:
                os.close(cmd_w)
                os.close(out_r)
                _close_all_but(cmd_r, out_w)
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
                os.umask(0)
                _serve(cmd_r, out_w)
                code = 0
            finally:
                os._exit(code)
        os.close(cmd_r)
        os.close(out_w)
        self.pid = pid
        self._cmd = cmd_w
        self._out = out_r
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.port: int = self._reply()["port"]

    def _read(self) -> None:
        buffer = b""
        while True:
            chunk = os.read(self._out, 65536)
            if not chunk:
                break
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            with self._changed:
                for line in lines:
                    doc = json.loads(line)
                    if "got" in doc:
                        self.received.append(doc["got"])
                    else:
                        self._replies.append(doc)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def _reply(self, timeout: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not self._replies:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._reader.is_alive():
                    raise AssertionError(f"the uid {self.uid} process did not answer")
                self._changed.wait(min(remaining, 0.2))
            return self._replies.pop(0)

    def do(self, op: str, **args: Any) -> None:
        """Run ``op`` as the other user; an ``OSError`` there is raised here as ``OSError``."""
        args = {k: os.fspath(v) if isinstance(v, Path) else v for k, v in args.items()}
        os.write(self._cmd, json.dumps({"op": op, **args}).encode() + b"\n")
        reply = self._reply()
        if "error" in reply:
            raise OSError(f"uid {self.uid} could not {op} {args}: {reply['error']}")

    def sync(self) -> None:
        """Return once every message the process received before now is in :attr:`received`."""
        self.do("ping")  # its answer comes after the reports of what it handled before

    def mkdir(self, path: Path, mode: int = 0o777) -> None:
        """Create ``path`` as the other user, with ``mode`` (its umask is 0)."""
        self.do("mkdir", path=path, mode=mode)

    def plant(
        self,
        directory: Path,
        topic: str,
        *,
        service: str = "micro.http.broker",
        version: str = "ff.http.broadcast",
        name: str = "planted",
    ) -> None:
        """Write a record of an http broker node on ``topic`` that points at this process.

        The record is what the ``local`` registry writes: this process's pid,
        start time and host, so that the liveness check finds it alive.
        ``directory`` (the ``<service>/`` directory) is created ``0777`` if missing.
        """
        self.do(
            "plant", directory=directory, topic=topic, service=service, version=version, name=name
        )

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            os.waitpid(self.pid, 0)
        with contextlib.suppress(OSError):
            os.close(self._cmd)
        self._reader.join(2)
        with contextlib.suppress(OSError):
            os.close(self._out)


# In the child -------------------------------------------------------------------------


def _close_all_but(*keep: int) -> None:
    limit = os.sysconf("SC_OPEN_MAX") if hasattr(os, "sysconf") else 4096
    low = 3
    for fd in sorted(keep):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, limit)


def _emit(out: int, doc: dict[str, Any]) -> None:
    os.write(out, json.dumps(doc).encode() + b"\n")


def _start_time() -> str:
    with open("/proc/self/stat", "rb") as f:
        data = f.read()
    return data[data.rfind(b")") + 2 :].split()[19].decode()


def _run(op: dict[str, Any], port: int) -> None:
    kind = op["op"]
    if kind == "mkdir":
        os.mkdir(op["path"], op["mode"])
    elif kind == "rmdir":
        os.rmdir(op["path"])
    elif kind == "ping":
        pass
    elif kind == "rename":
        os.rename(op["src"], op["dst"])
    elif kind == "symlink":
        os.symlink(op["target"], op["path"])
    elif kind == "plant":
        directory = op["directory"]
        if not os.path.isdir(directory):
            os.mkdir(directory, 0o777)
        record = {
            "service": {"name": op["service"], "version": op["version"], "metadata": {}},
            "node": {
                "id": f"{op['name']}-{op['topic']}",
                "address": f"127.0.0.1:{port}",
                "metadata": {"broker": "http", "topic": op["topic"], "secure": "false"},
            },
            "expires": time.time() + 3600,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "start": _start_time(),
        }
        path = os.path.join(directory, f"{op['name']}-{op['topic']}.json")
        with open(path, "w") as f:
            json.dump(record, f)
    else:
        raise OSError(f"unknown op {kind!r}")


def _answer(conn: socket.socket, out: int) -> None:
    """Read one HTTP request and answer 200; report the message of a go-micro envelope."""
    conn.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    if head.startswith(b"POST"):
        try:
            message = base64.b64decode(json.loads(body).get("Body") or "").decode()
        except ValueError:
            message = body.decode(errors="replace")
        _emit(out, {"got": message})
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


def _serve(commands: int, out: int) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port = listener.getsockname()[1]
    _emit(out, {"port": port})
    pending = b""
    while True:
        ready, _, _ = select.select([commands, listener.fileno()], [], [])
        if listener.fileno() in ready:
            conn, _ = listener.accept()
            try:
                _answer(conn, out)
            except OSError:
                pass
            finally:
                conn.close()
        if commands in ready:
            chunk = os.read(commands, 65536)
            if not chunk:
                return
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                try:
                    _run(json.loads(line), port)
                except OSError as exc:
                    _emit(out, {"error": str(exc)})
                else:
                    _emit(out, {"ok": True})
