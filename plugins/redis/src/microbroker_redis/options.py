"""The options of the Redis broker: the address, the mode, streams, delivery and TLS.

Every option is declared once, here, as a field of :class:`RedisOptions` with
its default. It comes from a keyword argument of
:class:`~microbroker_redis.RedisBroker` (and so of
``microbroker.get_broker("redis", ...)``), else from the environment variable
``MICRO_REDIS_<OPTION>`` (``MICRO_REDIS_MODE=pubsub``), else its default. The
address (``redis://[user:password@]host:port/db``, or ``rediss://`` for TLS)
gives the user, password and database; the ``username``, ``password`` and
``db`` options override them.
"""

from __future__ import annotations

import dataclasses
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

DEFAULT_ADDRESS = "redis://127.0.0.1:6379"
ENV_PREFIX = "MICRO_REDIS_"
DEFAULT_PORT = 6379

DEFAULT_MAX_MESSAGE_SIZE = 16 * 1024 * 1024

Mode = Literal["streams", "pubsub"]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """The server to connect to, parsed from the address."""

    host: str
    port: int
    tls: bool
    username: str | None
    password: str | None
    db: int

    def __str__(self) -> str:
        """The endpoint without its password, for error messages."""
        scheme = "rediss" if self.tls else "redis"
        user = f"{self.username}@" if self.username else ""
        return f"{scheme}://{user}{self.host}:{self.port}/{self.db}"


@dataclass(frozen=True, slots=True)
class RedisOptions:
    """The broker's settings. Defaults are the ones documented in the README."""

    # Mode -------------------------------------------------------------------------------
    mode: Mode = "streams"
    """``streams`` (Redis Streams and consumer groups: at least once) or ``pubsub``
    (PUBLISH/SUBSCRIBE, as go-micro's redis plugin: at most once)."""
    key_prefix: str = ""
    """Put before a topic to make its stream key or Pub/Sub channel."""

    # Streams ----------------------------------------------------------------------------
    maxlen: int = 0
    """Streams: trim each stream to about this many entries on XADD (``MAXLEN ~``); 0 keeps
    everything. Entries trimmed before a group read them are lost to it."""
    batch: int = 256
    """Streams: entries one XREADGROUP (and one XAUTOCLAIM) asks for: the prefetch."""
    block: float = 2.0
    """Streams: seconds one XREADGROUP waits for new entries before asking again."""
    claim_idle: float = 30.0
    """Streams: seconds an entry stays pending with a consumer (its handler running, or the
    consumer dead) before another member of its group takes it over (XAUTOCLAIM)."""
    claim_interval: float = 5.0
    """Streams: seconds between a subscription's XAUTOCLAIM sweeps of its group."""

    # Pub/Sub ----------------------------------------------------------------------------
    group_claim_ttl: float = 60.0
    """Pub/Sub: seconds the key that gives a message to one member of a queue group lives."""
    group_member_ttl: float = 10.0
    """Pub/Sub: seconds a queue group member counts as alive after its last heartbeat (it
    renews it every third of that); messages given to a member that died meanwhile are lost."""

    # Delivery ---------------------------------------------------------------------------
    publish_timeout: float = 10.0
    """Seconds a publish keeps trying across a lost connection before it fails."""
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    """The largest message (body and headers) the broker carries (Redis's own limit,
    ``proto-max-bulk-len``, is 512 MiB by default)."""

    # Connection -------------------------------------------------------------------------
    username: str | None = None
    """The ACL user, instead of the address's."""
    password: str | None = None
    """The password, instead of the address's."""
    db: int | None = None
    """The database number, instead of the address's path (default 0)."""
    connect_timeout: float = 5.0
    """Seconds to wait for the server to accept a connection."""
    socket_timeout: float = 10.0
    """Seconds a command waits for its answer (a server that stopped answering is then a
    lost connection); must be longer than ``block``."""
    reconnect_delay: float = 0.1
    """Seconds before the first retry after a lost connection; doubles per attempt."""
    max_reconnect_delay: float = 2.0
    """The cap on the wait between retries."""
    client_name: str | None = None
    """The connection name the server shows (``CLIENT LIST``)."""

    # TLS --------------------------------------------------------------------------------
    tls: ssl.SSLContext | None = None
    """A ready TLS context for ``rediss://``; or use the file options below."""
    tls_ca_file: str | None = None
    """The CA bundle that verifies the server (default: the system's)."""
    tls_cert_file: str | None = None
    """A client certificate, with ``tls_key_file``."""
    tls_key_file: str | None = None
    tls_verify: bool = True
    """Verify the server's certificate and host name (off only for tests)."""

    @classmethod
    def from_arguments(
        cls, arguments: Mapping[str, Any], environ: Mapping[str, str] | None = None
    ) -> RedisOptions:
        """Build the options from keyword arguments, then ``MICRO_REDIS_*`` variables."""
        environ = os.environ if environ is None else environ
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(arguments) - set(known))
        if unknown:
            raise TypeError(
                f"the redis broker does not take option(s) {', '.join(unknown)}; "
                f"it takes: address, {', '.join(known)}"
            )
        values: dict[str, Any] = {}
        for name, spec in known.items():
            if name in arguments and arguments[name] is not None:
                values[name] = arguments[name]
                continue
            raw = environ.get(ENV_PREFIX + name.upper())
            if raw is not None and name != "tls":
                values[name] = _parse_env(name, raw, spec.default)
        options = cls(**values)
        options.validate()
        return options

    def validate(self) -> None:
        """Raise ``ValueError`` for settings that cannot work, saying which and why."""
        if self.mode not in ("streams", "pubsub"):
            raise ValueError(f"mode must be 'streams' or 'pubsub', not {self.mode!r}")
        if self.maxlen < 0:
            raise ValueError("maxlen must be 0 (no trimming) or positive")
        if self.batch < 1:
            raise ValueError("batch must be at least 1")
        if self.max_message_size < 1024:
            raise ValueError("max_message_size must be at least 1024 bytes")
        if self.db is not None and self.db < 0:
            raise ValueError("db must be 0 or positive")
        for name in (
            "block",
            "claim_idle",
            "claim_interval",
            "group_claim_ttl",
            "group_member_ttl",
            "publish_timeout",
            "connect_timeout",
            "socket_timeout",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.socket_timeout <= self.block:
            raise ValueError("socket_timeout must be longer than block (a blocked read's wait)")
        if self.reconnect_delay <= 0 or self.max_reconnect_delay < self.reconnect_delay:
            raise ValueError("reconnect_delay must be positive and at most max_reconnect_delay")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("tls_cert_file and tls_key_file go together: give both or neither")

    def endpoint(self, address: str) -> Endpoint:
        """The server of ``address``, completed by the options."""
        address = address.strip() or DEFAULT_ADDRESS
        if "://" not in address:
            address = "redis://" + address
        parts = urlsplit(address)
        scheme = parts.scheme.lower()
        if scheme not in ("redis", "rediss"):
            raise ValueError(
                f"redis address {_censor(address)!r}: the scheme is redis:// or rediss://, "
                f"not {parts.scheme}://"
            )
        if "," in parts.netloc:
            raise ValueError(
                f"redis address {_censor(address)!r}: one server only (Redis Cluster and "
                "Sentinel are not supported)"
            )
        if parts.query or parts.fragment:
            raise ValueError(
                f"redis address {_censor(address)!r}: query parameters are not read; "
                "use the broker's options (db=, client_name=, tls_ca_file=...)"
            )
        try:
            port = parts.port or DEFAULT_PORT
        except ValueError:
            raise ValueError(f"redis address {_censor(address)!r}: bad port") from None
        path = parts.path.strip("/")
        try:
            db = int(path) if path else 0
        except ValueError:
            raise ValueError(
                f"redis address {_censor(address)!r}: the path is a database number"
            ) from None
        username = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password is not None else None
        if username is not None and password is None:
            # redis://secret@host: a password alone (the "default" user), as redis-cli reads it.
            username, password = None, username
        return Endpoint(
            host=parts.hostname or "127.0.0.1",
            port=port,
            tls=scheme == "rediss" or self.tls is not None,
            username=self.username if self.username is not None else username,
            password=self.password if self.password is not None else password,
            db=self.db if self.db is not None else db,
        )

    def tls_context(self) -> ssl.SSLContext:
        """The TLS context for ``rediss://``.

        A file that cannot be loaded is a ``ValueError`` naming the option and the file.
        """
        if self.tls is not None:
            return self.tls
        option, path = "tls_ca_file", self.tls_ca_file
        try:
            context = ssl.create_default_context(cafile=self.tls_ca_file)
            if self.tls_cert_file and self.tls_key_file:
                option, path = "tls_cert_file/tls_key_file", self.tls_cert_file
                context.load_cert_chain(self.tls_cert_file, self.tls_key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"cannot load {option} {path!r}: {exc}") from exc
        if not self.tls_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def key(self, topic: str) -> str:
        """The stream key (or Pub/Sub channel) of ``topic``."""
        return self.key_prefix + topic


def _censor(address: str) -> str:
    parts = urlsplit(address if "://" in address else "redis://" + address)
    if parts.password is None:
        return address
    return address.replace(":" + parts.password + "@", ":***@", 1)


def _parse_env(name: str, raw: str, default: Any) -> Any:
    try:
        if isinstance(default, bool):
            value = raw.strip().lower()
            if value in ("1", "true", "yes", "on"):
                return True
            if value in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        if isinstance(default, int) or name == "db":
            return int(raw)
        if isinstance(default, float):
            return float(raw)
    except ValueError:
        kind = "int" if name == "db" else type(default).__name__
        raise ValueError(f"{ENV_PREFIX}{name.upper()}={raw!r} is not a valid {kind}") from None
    return raw
