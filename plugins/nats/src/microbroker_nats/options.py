"""The options of the NATS broker: connection, authentication, TLS and JetStream.

Every option is a keyword argument of :class:`~microbroker_nats.NatsBroker`
(and so of ``microbroker.get_broker("nats", ...)``). An option not given as an
argument is read from the environment variable ``MICRO_NATS_<OPTION>``
(``MICRO_NATS_JETSTREAM=1``, ``MICRO_NATS_TOKEN=...``), so that a service
configured only through its environment can use all of them.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Literal

DEFAULT_ADDRESS = "nats://127.0.0.1:4222"
ENV_PREFIX = "MICRO_NATS_"
#: The smallest ``max_payload`` the broker works with: below it no room is left, after
#: the framing it reserves, for the headers a typed message carries and a body.
MIN_PAYLOAD = 4096

Storage = Literal["file", "memory"]
DeliverPolicy = Literal["new", "all"]
PublishAcks = Literal["sync", "async"]


@dataclass(slots=True)
class NatsOptions:
    """The broker's settings. Defaults are the ones documented in the README."""

    # Connection ---------------------------------------------------------------------
    name: str | None = None
    """The connection name shown by the server's monitoring."""
    connect_timeout: float = 2.0
    """Seconds to wait for one server to accept the connection."""
    connect_attempts: int = 2
    """Attempts per server on :meth:`connect` before it fails with a clear error."""
    reconnect_time_wait: float = 0.5
    """Seconds between reconnection attempts to one server."""
    max_reconnect_attempts: int = -1
    """Reconnection attempts per server after a connection is lost; -1 never gives up."""
    ping_interval: float = 20.0
    """Seconds between pings; two unanswered pings count as a lost connection."""
    drain_timeout: float = 30.0
    """Seconds :meth:`disconnect` waits for in-flight messages to be handled."""
    pending_size: int = 2 * 1024 * 1024
    """Bytes of publishes buffered while reconnecting; beyond it publish raises."""
    max_payload: int = 1024 * 1024
    """The server's ``max_payload`` assumed before connecting (nats-server's default);
    the server's INFO replaces it on connect. ``max_message_size`` is derived from it."""
    fast_path: bool = True
    """Use microbroker's lean message path over nats-py (same wire format); off: nats-py's own."""
    envelope: bool = False
    """Carry headers and body in go-micro's JSON envelope, ``{"Header": {...}, "Body":
    "<base64>"}``, as go-micro's NATS broker does, instead of NATS headers. Subscribers
    decode it; a payload that is not an envelope is delivered as it is."""
    max_pending: int = 512 * 1024
    """Messages a subscription holds received and not yet handled (nats.go's default).
    Core NATS drops what comes beyond it and reports it (``SlowConsumer``); JetStream
    holds at least ``max_ack_pending`` and hands anything beyond back to the server."""

    # Authentication -----------------------------------------------------------------
    token: str | None = None
    user: str | None = None
    password: str | None = None
    nkey_seed: str | None = None
    """Path of a file holding an NKey seed (``SU...``)."""
    credentials: str | None = None
    """Path of a ``.creds`` file (user JWT and NKey seed), as issued by ``nsc``."""

    # TLS ----------------------------------------------------------------------------
    tls: ssl.SSLContext | None = None
    """A ready TLS context; or use the three file options below."""
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_hostname: str | None = None
    tls_handshake_first: bool = False

    # JetStream ----------------------------------------------------------------------
    jetstream: bool = False
    """At-least-once delivery through JetStream instead of core NATS."""
    stream: str = "MICROBROKER"
    """The stream the broker creates or binds to."""
    subjects: Sequence[str] | None = None
    """The stream's subjects. ``None``: each topic is added to the stream when first used."""
    storage: Storage = "file"
    replicas: int = 1
    max_age: float | None = None
    """Seconds a message is kept in the stream; ``None`` keeps it until limits say otherwise."""
    duplicate_window: float = 120.0
    """Seconds in which a republished ``Micro-ID`` (``Nats-Msg-Id``) is stored only once."""
    ack_wait: float = 30.0
    """Seconds the server waits for an ack before it delivers the message again."""
    max_deliver: int = -1
    """A server-side backstop: deliveries of one message before the server itself stops
    (without a dead letter). -1 (the default) leaves giving up to the subscription's
    ``RetryPolicy``; set it above the policy's ``max_attempts`` if at all."""
    max_ack_pending: int = 1000
    """Messages a consumer may have delivered and not yet acked."""
    publish_timeout: float = 5.0
    """Seconds a JetStream publish waits for the server's acknowledgement."""
    publish_acks: PublishAcks = "sync"
    """``sync``: a JetStream publish returns once the server has stored the message.
    ``async``: it returns once the message is written, its acknowledgement awaited in the
    background (at most ``max_pending_acks`` at once); a message not acknowledged is
    reported to the ``on_error`` hooks and raised by :meth:`NatsBroker.flush`."""
    max_pending_acks: int = 4000
    """With ``publish_acks="async"``: publishes awaiting their acknowledgement at once;
    a publish beyond it waits for room (nats-py's and nats.go's default, 4000)."""
    deliver_policy: DeliverPolicy = "new"
    """Where a new consumer starts: ``new`` messages only, or ``all`` the stream holds."""
    inactive_threshold: float = 3600.0
    """Seconds after which the server deletes a broadcast consumer whose client is gone."""

    extra: dict[str, Any] = field(default_factory=dict)
    """Further keyword arguments passed to ``nats.connect`` as they are."""

    @classmethod
    def from_arguments(
        cls, arguments: Mapping[str, Any], environ: Mapping[str, str] | None = None
    ) -> NatsOptions:
        """Build the options from keyword arguments, then ``MICRO_NATS_*`` variables."""
        environ = os.environ if environ is None else environ
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(arguments) - set(names) - {"extra"})
        if unknown:
            raise TypeError(
                f"the nats broker does not take option(s) {', '.join(unknown)}; "
                f"it takes: {', '.join(n for n in names if n != 'extra')} "
                "(pass other nats.connect() arguments as extra={...})"
            )
        values: dict[str, Any] = {}
        for name, spec in names.items():
            if name in arguments and arguments[name] is not None:
                values[name] = arguments[name]
                continue
            raw = environ.get(ENV_PREFIX + name.upper())
            if raw is not None and name not in ("tls", "extra"):
                values[name] = _parse_env(name, raw, spec.default)
        options = cls(**values)
        options.validate()
        return options

    def validate(self) -> None:
        """Raise ``ValueError`` for settings that cannot work, saying which and why."""
        if self.storage not in ("file", "memory"):
            raise ValueError(f"storage must be 'file' or 'memory', not {self.storage!r}")
        if self.deliver_policy not in ("new", "all"):
            raise ValueError(f"deliver_policy must be 'new' or 'all', not {self.deliver_policy!r}")
        if self.connect_attempts < 1:
            raise ValueError("connect_attempts must be at least 1")
        if self.max_deliver == 0 or self.max_deliver < -1:
            raise ValueError("max_deliver must be positive, or -1 for no limit")
        if self.publish_acks not in ("sync", "async"):
            raise ValueError(f"publish_acks must be 'sync' or 'async', not {self.publish_acks!r}")
        if self.max_pending_acks < 1:
            raise ValueError("max_pending_acks must be at least 1")
        if self.max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        if self.max_payload < MIN_PAYLOAD:
            raise ValueError(f"max_payload must be at least {MIN_PAYLOAD} bytes")
        if not self.stream or any(c in self.stream for c in ".*> \t\r\n/\\"):
            raise ValueError(
                f"stream name {self.stream!r} is not valid: use letters, digits, '-' and '_'"
            )
        if self.user is not None and self.token is not None:
            raise ValueError("give either token or user/password, not both")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("tls_cert_file and tls_key_file go together: give both or neither")
        if self.nkey_seed and self.credentials:
            raise ValueError("give either nkey_seed or credentials, not both")
        if self.nkey_seed or self.credentials:
            require_nkeys()
        if isinstance(self.subjects, str):
            self.subjects = [s.strip() for s in self.subjects.split(",") if s.strip()]

    @property
    def uses_envelope(self) -> bool:
        """Whether messages travel in go-micro's JSON envelope (option ``envelope``)."""
        return bool(self.envelope)

    def tls_context(self) -> ssl.SSLContext | None:
        """The TLS context to connect with, or ``None`` for a plain connection.

        A file that cannot be loaded is a ``ValueError`` naming the option and the file.
        """
        if self.tls is not None:
            return self.tls
        if not (self.tls_ca_file or self.tls_cert_file):
            return None
        option, path = "tls_ca_file", self.tls_ca_file
        try:
            context = ssl.create_default_context(cafile=self.tls_ca_file)
            if self.tls_cert_file and self.tls_key_file:
                option, path = "tls_cert_file/tls_key_file", self.tls_cert_file
                context.load_cert_chain(self.tls_cert_file, self.tls_key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"cannot load {option} {path!r}: {exc}") from exc
        return context

    def connect_kwargs(self) -> dict[str, Any]:
        """The keyword arguments for ``nats.connect`` (callbacks and servers excepted).

        Raises ``ValueError`` for a TLS, NKey seed or credentials file that cannot
        be used (naming the option and the file), before any connection is made.
        """
        kwargs: dict[str, Any] = {
            "name": self.name,
            "connect_timeout": self.connect_timeout,
            "reconnect_time_wait": self.reconnect_time_wait,
            "ping_interval": self.ping_interval,
            "drain_timeout": self.drain_timeout,
            "pending_size": self.pending_size,
            "token": self.token,
            "user": self.user,
            "password": self.password,
            "tls_handshake_first": self.tls_handshake_first,
        }
        tls = self.tls_context()
        if tls is not None:
            kwargs["tls"] = tls
            if self.tls_hostname:
                kwargs["tls_hostname"] = self.tls_hostname
        if self.credentials:
            check_credentials_file(self.credentials)
            kwargs["user_credentials"] = self.credentials
        elif self.nkey_seed:
            check_nkey_seed_file(self.nkey_seed)
            kwargs["nkeys_seed"] = self.nkey_seed
        kwargs.update(self.extra)
        return kwargs


def require_nkeys() -> ModuleType:
    """The ``nkeys`` package; a clear ``ImportError`` when it (the ``nkeys`` extra) is missing."""
    try:
        return importlib.import_module("nkeys")
    except ImportError as exc:
        raise ImportError(
            "NKey and credentials-file authentication (nkey_seed=, credentials=) need the "
            f"nkeys package, which cannot be imported ({exc}): "
            "pip install 'microbroker-nats[nkeys]'"
        ) from exc


def _read_secret(option: str, path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as file:
            return file.read()
    except OSError as exc:
        raise ValueError(f"cannot read the {option} file {path!r}: {exc.strerror or exc}") from exc


def check_nkey_seed_file(path: str) -> None:
    """Check that ``path`` holds an NKey seed, as ``nkey_seed`` needs (``ValueError`` if not)."""
    nkeys = require_nkeys()
    seed = _read_secret("nkey_seed", path).strip()
    try:
        nkeys.from_seed(bytearray(seed.encode())).wipe()
    except Exception as exc:
        raise ValueError(
            f"the nkey_seed file {path!r} does not hold a valid NKey seed "
            "(one line 'SU...', as 'nk -gen user' writes): "
            f"{str(exc) or type(exc).__name__}"
        ) from None


_CREDS_BLOCKS = ("BEGIN NATS USER JWT", "BEGIN USER NKEY SEED")


def check_credentials_file(path: str) -> None:
    """Check that ``path`` is a ``.creds`` file (a user JWT and its seed); ``ValueError`` if not.

    nats-py, given a file without the JWT block, would read it forever.
    """
    require_nkeys()
    lines = _read_secret("credentials", path).splitlines()
    for block in _CREDS_BLOCKS:
        at = next((n for n, line in enumerate(lines) if block in line), None)
        if at is None or at + 1 >= len(lines) or not lines[at + 1].strip():
            raise ValueError(
                f"the credentials file {path!r} is not a NATS .creds file: it has no "
                f"'-----{block}-----' block (a .creds file holds a user JWT and its NKey "
                "seed, as 'nsc generate creds' writes)"
            )


def parse_servers(address: str | None) -> list[str]:
    """Split a comma-separated server list, adding ``nats://`` where no scheme is given."""
    servers = []
    for part in (address or DEFAULT_ADDRESS).split(","):
        part = part.strip()
        if not part:
            continue
        if "://" not in part:
            part = "nats://" + part
        servers.append(part)
    if not servers:
        servers.append(DEFAULT_ADDRESS)
    return servers


def _parse_env(name: str, raw: str, default: Any) -> Any:
    if isinstance(default, bool):
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if isinstance(default, int):
        return int(raw)
    if isinstance(default, float):
        return float(raw)
    if name == "max_age":
        return float(raw)
    if name == "subjects":
        return [s.strip() for s in raw.split(",") if s.strip()]
    return raw
