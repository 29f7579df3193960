"""Helpers of the mdns tests: host processes in namespaces, the Go program, a DNS codec."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from support.netns import Host

HERE = Path(__file__).parent
HOST_SCRIPT = HERE / "mdns_host.py"
GO_PROGRAM = HERE / "golden" / "gomicro_txt.go"
GOLDEN = HERE / "golden" / "txt_records.json"


class HostProcess:
    """A process started inside a host's namespace; its JSON stdout lines are collected."""

    def __init__(self, host: Host, argv: list[str], env: dict[str, str]) -> None:
        self.host = host
        self.events: list[dict[str, Any]] = []
        self._stderr: list[str] = []
        self._changed = threading.Condition()
        self.proc = subprocess.Popen(
            host.exec_argv(argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "text", "line": line.rstrip("\n")}
            with self._changed:
                self.events.append(event)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._stderr.append(line)

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], what: str, timeout: float = 60.0
    ) -> dict[str, Any]:
        """The first event matching ``predicate``; fails after ``timeout`` (a hang bound only)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for event in self.events:
                    if predicate(event):
                        return event
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.proc.poll() is not None:
                    raise AssertionError(
                        f"{self.host.name}: {what} did not happen within {timeout}s "
                        f"(exit {self.proc.poll()}); last events {self.events[-5:]}\n"
                        f"stderr: {''.join(self._stderr[-40:])}"
                    )
                self._changed.wait(min(remaining, 0.2))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send("quit")
                self.proc.wait(20)
            except (OSError, subprocess.TimeoutExpired):
                self.kill()


def host_env(host: Host, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The whole configuration of a host process: the mdns registry and a listen address."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MICRO_", "MDNS_HOST_"))}
    env.update(MICRO_REGISTRY="mdns", MICRO_BROKER_ADDRESS=f"{host.address}:0", **(extra or {}))
    return env


def run_go_txt(binary: Path, mode: str, lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Feed ``lines`` to the Go program and read one JSON answer per line."""
    done = subprocess.run(
        [str(binary), mode],
        input="".join(json.dumps(line) + "\n" for line in lines),
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return [json.loads(line) for line in done.stdout.splitlines()]


# A DNS codec of the tests' own, to check the registry's messages without zeroconf. -------

TYPE_A, TYPE_PTR, TYPE_TXT, TYPE_AAAA, TYPE_SRV = 1, 12, 16, 28, 33


@dataclass
class RR:
    """A resource record as the wire has it; ``data`` is parsed for PTR, SRV, A, TXT."""

    name: str
    type: int
    klass: int
    ttl: int
    data: Any


@dataclass
class Message:
    id: int
    flags: int
    questions: list[tuple[str, int, int]]
    answers: list[RR]
    authorities: list[RR]
    additionals: list[RR]


def _read_name(data: bytes, offset: int) -> tuple[str, int]:
    labels: list[str] = []
    end = None
    jumps = 0
    while True:
        length = data[offset]
        if length & 0xC0 == 0xC0:
            if end is None:
                end = offset + 2
            offset = ((length & 0x3F) << 8) | data[offset + 1]
            jumps += 1
            assert jumps < 64, "compression loop"
            continue
        offset += 1
        if length == 0:
            break
        labels.append(data[offset : offset + length].decode("utf-8"))
        offset += length
    return ".".join(labels) + ".", end if end is not None else offset


def parse_message(data: bytes) -> Message:
    """Parse a DNS message (RFC 1035, with name compression)."""
    ident, flags, qd, an, ns, ar = struct.unpack_from("!6H", data)
    offset = 12
    questions = []
    for _ in range(qd):
        name, offset = _read_name(data, offset)
        kind, klass = struct.unpack_from("!HH", data, offset)
        offset += 4
        questions.append((name, kind, klass))
    sections: list[list[RR]] = [[], [], []]
    for section, count in zip(sections, (an, ns, ar), strict=True):
        for _ in range(count):
            name, offset = _read_name(data, offset)
            kind, klass, ttl, length = struct.unpack_from("!HHIH", data, offset)
            offset += 10
            rdata = data[offset : offset + length]
            parsed: Any = rdata
            if kind == TYPE_PTR:
                parsed = _read_name(data, offset)[0]
            elif kind == TYPE_SRV:
                priority, weight, port = struct.unpack_from("!HHH", data, offset)
                parsed = (priority, weight, port, _read_name(data, offset + 6)[0])
            elif kind == TYPE_A:
                parsed = socket.inet_ntoa(rdata)
            elif kind == TYPE_TXT:
                strings, at = [], 0
                while at < len(rdata):
                    strings.append(rdata[at + 1 : at + 1 + rdata[at]].decode())
                    at += 1 + rdata[at]
                parsed = strings
            section.append(RR(name, kind, klass, ttl, parsed))
            offset += length
    return Message(ident, flags, questions, *sections)


def _name(name: str) -> bytes:
    return (
        b"".join(
            bytes((len(label.encode()),)) + label.encode() for label in name.rstrip(".").split(".")
        )
        + b"\x00"
    )


def build_message(
    ident: int,
    flags: int,
    questions: list[tuple[str, int, int]],
    answers: list[tuple[str, int, int, int, bytes]],
) -> bytes:
    """A DNS message without compression: answers are (name, type, class, ttl, rdata)."""
    out = [struct.pack("!6H", ident, flags, len(questions), len(answers), 0, 0)]
    for name, kind, klass in questions:
        out.append(_name(name) + struct.pack("!HH", kind, klass))
    for name, kind, klass, ttl, rdata in answers:
        out.append(_name(name) + struct.pack("!HHIH", kind, klass, ttl, len(rdata)) + rdata)
    return b"".join(out)


def gomicro_node_answers(
    instance: str, service: str, host: str, ip: str, port: int, strings: list[str], ttl: int
) -> list[tuple[str, int, int, int, bytes]]:
    """The answer section go-micro's server sends for a node (zone.go's serviceRecords)."""
    txt = b"".join(bytes((len(s),)) + s.encode() for s in strings)
    return [
        (service, TYPE_PTR, 1, ttl, _name(instance)),
        (instance, TYPE_SRV, 1, ttl, struct.pack("!HHH", 10, 1, port) + _name(host)),
        (host, TYPE_A, 1, ttl, socket.inet_aton(ip)),
        (instance, TYPE_TXT, 1, ttl, txt),
    ]


def gomicro_client_socket(address: str) -> socket.socket:
    """A socket like go-micro's mDNS client's: an ephemeral port, multicast out of ``address``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((address, 0))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(address))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
    sock.settimeout(0.05)
    return sock


def receive_all(sock: socket.socket, seconds: float) -> list[tuple[bytes, tuple[str, int]]]:
    """Every datagram ``sock`` gets within ``seconds`` (answers to one query come as several)."""
    got = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            got.append(sock.recvfrom(65536))
        except TimeoutError:
            continue
    return got


async def wait_nodes(
    registry: Any,
    predicate: Callable[[list[Any]], bool],
    what: str,
    service: str = "micro.http.broker",
    timeout: float = 20.0,
) -> list[Any]:
    """Poll ``registry.get_service(service)`` until ``predicate(nodes)`` holds; the nodes."""
    import asyncio

    deadline = time.monotonic() + timeout
    while True:
        nodes = [n for s in await registry.get_service(service) for n in s.nodes]
        if predicate(nodes):
            return nodes
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout}s; nodes: {nodes}")
        await asyncio.sleep(0.02)
