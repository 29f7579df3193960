"""A real Redis for the tests (Debian package ``redis-server``), on free loopback ports.

Never the system service on 6379 and never its data: every server here is a
``redis-server`` child process with its own config file, on a free port bound to
127.0.0.1, with its own data directory (``dir``). Apart from the port, the
directory and what a test asks for (an ACL user, a TLS listener, durability),
the settings are Redis's stock ones: RDB snapshots at the default save points
and on shutdown, no append-only file. ``tests/support/install-redis.sh`` (run by
tox) installs the server where it is missing.
"""

from __future__ import annotations

import socket
from pathlib import Path
from urllib.parse import quote

from .certificates import Certificate, CertificateAuthority
from .process import HOST, ServerProcess, find_binary, free_port, port_open, unavailable


def redis_binary() -> str | None:
    return find_binary("redis-server", "/usr/bin/redis-server")


def ping(port: int, host: str = HOST, timeout: float = 1.0) -> bool:
    """Whether the server on ``port`` answers PING with PONG (not ``-LOADING``)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            reply = sock.recv(64)
    except OSError:
        return False
    return reply.startswith(b"+PONG") or reply.startswith(b"-NOAUTH")


class RedisServer(ServerProcess):
    """``redis-server`` on ``127.0.0.1:<free port>`` with a data directory of its own.

    :param user: with ``password``: an ACL user with every permission; the
        ``default`` user then needs the password too (``requirepass``).
    :param tls: also listen for TLS on :attr:`tls_port`, with a certificate for
        ``127.0.0.1`` issued by a CA made for this server (:attr:`ca_file`).
    :param durable: ``appendonly yes`` with ``appendfsync always``: every write is in
        the append-only file, fsynced, before the server answers it.

    :meth:`restart` keeps the data directory (a clean stop saves the RDB snapshot).
    """

    def __init__(
        self,
        *,
        user: str | None = None,
        password: str | None = None,
        tls: bool = False,
        durable: bool = False,
        name: str = "redis",
    ) -> None:
        binary = redis_binary()
        if binary is None:
            unavailable(
                "redis-server not found (Debian package redis-server): "
                "run tests/support/install-redis.sh"
            )
        assert binary is not None
        self.binary = binary
        self.user = user
        self.password = password
        self.tls = tls
        self.durable = durable
        self.tls_port = free_port() if tls else None
        super().__init__(name, self._argv, ready=self._ready_check, start_timeout=30.0)
        self.authority: CertificateAuthority | None = None
        self.certificate: Certificate | None = None
        if tls:
            self.authority = CertificateAuthority(self.workdir)
            self.certificate = self.authority.issue("server")
        (self.workdir / "data").mkdir(exist_ok=True)
        self._write_config()

    # Addresses --------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``redis://[user:password@]127.0.0.1:<port>``."""
        return self._url("redis", self.port)

    @property
    def tls_url(self) -> str:
        if self.tls_port is None:
            raise RuntimeError("this redis-server has no TLS listener: start it with tls=True")
        return self._url("rediss", self.tls_port)

    def _url(self, scheme: str, port: int) -> str:
        auth = ""
        if self.user is not None:
            auth = f"{quote(self.user, safe='')}:{quote(self.password or '', safe='')}@"
        return f"{scheme}://{auth}{HOST}:{port}"

    @property
    def ca_file(self) -> Path:
        if self.authority is None:
            raise RuntimeError("this redis-server has no TLS: start it with tls=True")
        return self.authority.cert_file

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    # Configuration ----------------------------------------------------------------------

    def _write_config(self) -> None:
        lines = [
            f"bind {HOST}",
            f"port {self.port}",
            f"dir {self.data_dir}",
            "daemonize no",
            'logfile ""',
            "loglevel warning",
        ]
        if self.durable:
            lines += ["appendonly yes", "appendfsync always"]
        if self.user is not None:
            secret = self.password or ""
            lines += [f"user {self.user} on >{secret} ~* &* +@all", f"requirepass {secret}"]
        if self.certificate is not None and self.authority is not None:
            lines += [
                f"tls-port {self.tls_port}",
                f"tls-cert-file {self.certificate.cert_file}",
                f"tls-key-file {self.certificate.key_file}",
                f"tls-ca-cert-file {self.authority.cert_file}",
                "tls-auth-clients no",
            ]
        (self.workdir / "redis.conf").write_text("\n".join(lines) + "\n")

    def _argv(self, port: int) -> list[str]:
        return [self.binary, str(self.workdir / "redis.conf")]

    def _ready_check(self) -> bool:
        if not ping(self.port):
            return False
        return self.tls_port is None or port_open(self.tls_port)
