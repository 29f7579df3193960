"""A real RabbitMQ for the tests (Debian package ``rabbitmq-server``), on free loopback ports.

Never the system service on 5672, never its node, its epmd or its data: every
server here is a node of its own (``RABBITMQ_NODENAME=mb-<random>@localhost``)
with its own data (mnesia) directory, its own config file (loopback listeners
on free ports, no plugin, console logging), its own distribution port and its
own epmd, started here as a child process on a free port (``ERL_EPMD_PORT``).
Kill, stop, pause and resume only ever signal the Erlang VM (``beam.smp``)
that is a child of this server's own start script, found by its parent pid.
``tests/support/install-rabbitmq.sh`` (run by tox) installs the server where
it is missing.

RabbitMQ takes several seconds to boot: fixtures start one per session where
they can, and the server is ready when an AMQP handshake succeeds.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import time
from pathlib import Path

from .certificates import Certificate, CertificateAuthority
from .process import (
    HOST,
    ServerProcess,
    find_binary,
    free_port,
    port_open,
    unavailable,
    wait_stopped,
)

#: The start script that runs the VM in the foreground (the wrapper in /usr/sbin would
#: switch to the ``rabbitmq`` user, whose files these are not).
SERVER_SCRIPTS = (
    "/usr/lib/rabbitmq/bin/rabbitmq-server",
    "/usr/local/lib/rabbitmq/bin/rabbitmq-server",
)


def rabbitmq_script() -> str | None:
    return find_binary("rabbitmq-server-not-on-path", *SERVER_SCRIPTS)


def epmd_binary() -> str | None:
    return find_binary("epmd", "/usr/bin/epmd")


def amqp_handshake(port: int, host: str = HOST, timeout: float = 1.0) -> bool:
    """Whether ``port`` answers an AMQP 0-9-1 protocol header with ``connection.start``."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"AMQP\x00\x00\x09\x01")
            frame = sock.recv(16)
    except OSError:
        return False
    # A method frame (type 1) on channel 0 whose class is 10 (connection), method 10 (start).
    return len(frame) >= 11 and frame[0] == 1 and frame[7:11] == b"\x00\x0a\x00\x0a"


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


class RabbitMQServer(ServerProcess):
    """``rabbitmq-server`` as a node of its own on ``127.0.0.1:<free port>``.

    :param user: with ``password``: the only user (as ``default_user``), instead of guest.
    :param vhost: the virtual host created at first boot (``default_vhost``; default ``/``).
    :param tls: also listen for AMQPS on :attr:`tls_port`, with a certificate for
        ``127.0.0.1`` issued by a CA made for this server (:attr:`ca_file`).
    :param name: the prefix of the node name and of the work directory.

    :meth:`restart` keeps the data directory, so that durable queues and
    persistent messages survive it, as they do a real server's restart.
    """

    def __init__(
        self,
        *,
        user: str | None = None,
        password: str | None = None,
        vhost: str = "/",
        tls: bool = False,
        name: str = "rabbitmq",
        config: tuple[str, ...] = (),
    ) -> None:
        script = rabbitmq_script()
        epmd = epmd_binary()
        if script is None or epmd is None:
            unavailable(
                "rabbitmq-server not found (Debian package rabbitmq-server): "
                "run tests/support/install-rabbitmq.sh"
            )
        assert script is not None
        assert epmd is not None
        self.script = script
        self.epmd = epmd
        self.user = user
        self.password = password
        self.vhost = vhost
        self.tls = tls
        self.config = config  # more rabbitmq.conf lines ("frame_max = 16384")
        self.node = f"mb-{name}-{secrets.token_hex(4)}@localhost"
        self.dist_port = free_port()
        self.epmd_port = free_port()
        self.tls_port = free_port() if tls else None
        self._epmd: subprocess.Popen[bytes] | None = None
        super().__init__(
            name,
            self._argv,
            ready=self._ready_check,
            start_timeout=90.0,
        )
        self.env = self._env()
        self.authority: CertificateAuthority | None = None
        self.certificate: Certificate | None = None
        if tls:
            self.authority = CertificateAuthority(self.workdir)
            self.certificate = self.authority.issue("server")
        self._write_config()

    # Addresses --------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``amqp://[user:pass@]127.0.0.1:<port>[/vhost]``."""
        return self._url("amqp", self.port)

    @property
    def tls_url(self) -> str:
        if self.tls_port is None:
            raise RuntimeError("this rabbitmq-server has no TLS listener: start it with tls=True")
        return self._url("amqps", self.tls_port)

    def _url(self, scheme: str, port: int) -> str:
        from urllib.parse import quote

        auth = ""
        if self.user is not None:
            auth = f"{quote(self.user, safe='')}:{quote(self.password or '', safe='')}@"
        path = "" if self.vhost == "/" else "/" + quote(self.vhost, safe="")
        return f"{scheme}://{auth}{HOST}:{port}{path}"

    @property
    def ca_file(self) -> Path:
        if self.authority is None:
            raise RuntimeError("this rabbitmq-server has no TLS: start it with tls=True")
        return self.authority.cert_file

    # Configuration ----------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        work = self.workdir
        return {
            # Never the machine's /etc/rabbitmq/rabbitmq-env.conf: it names the system node.
            "RABBITMQ_CONF_ENV_FILE": str(work / "rabbitmq-env.conf"),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": HOST,
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(work / "mnesia"),
            "RABBITMQ_LOG_BASE": str(work / "log"),
            "RABBITMQ_CONFIG_FILE": str(work / "rabbitmq"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(work / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(work / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(work / "rabbitmq.pid"),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": HOST,
            "ERL_FLAGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            # The Erlang cookie is made in $HOME: this server's own directory.
            "HOME": str(work),
        }

    def _write_config(self) -> None:
        (self.workdir / "rabbitmq-env.conf").write_text("")
        (self.workdir / "enabled_plugins").write_text("[].\n")
        (self.workdir / "advanced.config").write_text("[].\n")
        lines = [
            f"listeners.tcp.1 = {HOST}:{self.port}",
            "log.console = true",
            "log.console.level = warning",
            "log.file = false",
            # A test machine's disk may be fuller than the 50 MB default allows for.
            "disk_free_limit.absolute = 10MB",
        ]
        if self.user is not None:
            lines += [f"default_user = {self.user}", f"default_pass = {self.password or ''}"]
        if self.vhost != "/":
            lines.append(f"default_vhost = {self.vhost}")
        if self.certificate is not None and self.authority is not None:
            lines += [
                f"listeners.ssl.1 = {HOST}:{self.tls_port}",
                f"ssl_options.cacertfile = {self.authority.cert_file}",
                f"ssl_options.certfile = {self.certificate.cert_file}",
                f"ssl_options.keyfile = {self.certificate.key_file}",
                "ssl_options.verify = verify_none",
                "ssl_options.fail_if_no_peer_cert = false",
            ]
        lines += self.config
        (self.workdir / "rabbitmq.conf").write_text("\n".join(lines) + "\n")

    def _argv(self, port: int) -> list[str]:
        return [self.script]

    def _ready_check(self) -> bool:
        if not amqp_handshake(self.port):
            return False
        return self.tls_port is None or port_open(self.tls_port)

    # Processes --------------------------------------------------------------------------

    def start(self) -> None:
        if self.running:
            return
        if self._epmd is None or self._epmd.poll() is not None:
            self._epmd = subprocess.Popen(
                [self.epmd, "-port", str(self.epmd_port), "-address", HOST],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            deadline = time.monotonic() + 10
            while not port_open(self.epmd_port) and time.monotonic() < deadline:
                time.sleep(0.02)
        super().start()

    @property
    def vm_pid(self) -> int | None:
        """The pid of this server's Erlang VM: the ``beam.smp`` child of its start script."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return None
        for child in _children(proc.pid):
            if _comm(child).startswith("beam"):
                return child
        return None

    def _signal_vm(self, sig: int) -> bool:
        pid = self.vm_pid
        if pid is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        return True

    def kill(self) -> None:
        """kill -9 of this server's Erlang VM: nothing flushed, no goodbye to the clients."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            self._signal_vm(signal.SIGKILL)
            try:
                proc.wait(15)  # the start script returns once its VM is gone
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.proc = None
        self._wait_port_closed()

    def stop(self, timeout: float = 30.0) -> None:
        """A clean shutdown (SIGTERM to the start script, which stops the node)."""
        if self.proc is not None and self.proc.poll() is None:
            self._signal_vm(signal.SIGCONT)
        super().stop(timeout)

    def pause(self) -> None:
        """SIGSTOP to the VM: its sockets stay open and nothing answers (a stalled server)."""
        if self._signal_vm(signal.SIGSTOP) and self.vm_pid is not None:
            wait_stopped(self.vm_pid)

    def resume(self) -> None:
        self._signal_vm(signal.SIGCONT)

    def close(self) -> None:
        super().close()
        epmd = self._epmd
        if epmd is not None and epmd.poll() is None:
            epmd.terminate()
            try:
                epmd.wait(5)
            except subprocess.TimeoutExpired:
                epmd.kill()
                epmd.wait()
        self._epmd = None
