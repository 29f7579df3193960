"""A real Mosquitto for the tests (Debian package ``mosquitto``), on a free loopback port.

Never the system service on 1883: every server here is a child process with
its own config file, listening on ``127.0.0.1:<free port>``, with persistence
in its own directory so that a restart on the same port keeps sessions and
queued QoS 1/2 messages. ``tests/support/install-mosquitto.sh`` (run by tox)
installs the binary where it is missing.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from .certificates import Certificate, CertificateAuthority
from .process import HOST, ServerProcess, find_binary, unavailable

#: Messages Mosquitto queues per offline or slow client. Its default (1000)
#: drops QoS 1 messages beyond it; the no-loss cases send ten thousand.
MAX_QUEUED = 200_000


def mosquitto_binary() -> str | None:
    return find_binary("mosquitto", "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


class MosquittoServer(ServerProcess):
    """``mosquitto -c <own config>`` on ``127.0.0.1:<free port>``.

    :param users: ``{name: password}``; when given, anonymous clients are refused.
    :param tls: serve TLS with a certificate made for ``127.0.0.1`` by a test CA
        (its CA file is :attr:`ca_file`).
    :param persistence: keep sessions and queued messages across :meth:`restart`.
    :param durable: with persistence, write the database after every change, so that
        even a SIGKILL loses nothing the server has acknowledged (slow; for fault tests).
    :param stock_limits: keep Mosquitto's own ``max_inflight_messages`` (20, which it
        announces as its Receive Maximum) and ``max_queued_messages`` (1000), as a
        default installation has them, instead of 100 and :data:`MAX_QUEUED`.
    """

    def __init__(
        self,
        *,
        users: dict[str, str] | None = None,
        tls: bool = False,
        persistence: bool = True,
        durable: bool = False,
        stock_limits: bool = False,
        name: str = "mosquitto",
    ) -> None:
        binary = mosquitto_binary()
        if binary is None:
            unavailable("mosquitto not found: run tests/support/install-mosquitto.sh")
        assert binary is not None
        self.binary = binary
        self.users = users
        self.tls = tls
        self.persistence = persistence
        self.durable = durable
        self.stock_limits = stock_limits
        super().__init__(name, self._argv)
        #: With ``tls``: the CA file a client trusts, and the server's certificate it issued.
        self.ca_file: Path | None = None
        self.certificate: Certificate | None = None
        if tls:
            self._make_certificate()

    @property
    def host(self) -> str:
        return HOST

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{HOST}:{self.port}"

    def _make_certificate(self) -> None:
        authority = CertificateAuthority(self.workdir)
        self.ca_file = authority.cert_file
        self.certificate = authority.issue("server")

    def _password_file(self) -> Path:
        path = self.workdir / "passwords"
        path.write_text("")
        passwd = find_binary("mosquitto_passwd", "/usr/bin/mosquitto_passwd")
        if passwd is None:
            unavailable("mosquitto_passwd not found (package mosquitto)")
        assert passwd is not None
        for user, password in (self.users or {}).items():
            subprocess.run([passwd, "-b", str(path), user, password], check=True)
        return path

    def _argv(self, port: int) -> list[str]:
        config = self.workdir / "mosquitto.conf"
        lines = [
            "per_listener_settings false",
            f"listener {port} {HOST}",
            "log_dest stdout",
            "log_type error",
            "log_type warning",
            "log_type notice",
        ]
        if not self.stock_limits:
            lines += [f"max_queued_messages {MAX_QUEUED}", "max_inflight_messages 100"]
        if os.geteuid() == 0:
            # As root, mosquitto switches to the user "mosquitto", which can neither write
            # the persistence file nor read the key in this root-owned directory.
            lines.append("user root")
        if self.certificate is not None:
            lines += [
                f"certfile {self.certificate.cert_file}",
                f"keyfile {self.certificate.key_file}",
            ]
        if self.users is not None:
            lines += ["allow_anonymous false", f"password_file {self._password_file()}"]
        else:
            lines.append("allow_anonymous true")
        if self.persistence:
            lines += [
                "persistence true",
                f"persistence_location {self.workdir}/",
                "persistence_file mosquitto.db",
            ]
            if self.durable:
                lines += ["autosave_on_changes true", "autosave_interval 1"]
        config.write_text("\n".join(lines) + "\n")
        return [self.binary, "-c", str(config)]
