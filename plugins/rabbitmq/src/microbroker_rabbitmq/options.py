"""The options of the RabbitMQ broker: the address, the topology, delivery and TLS.

Every option is declared once, here, as a field of :class:`RabbitMQOptions`
with its default. It comes from a keyword argument of
:class:`~microbroker_rabbitmq.RabbitMQBroker` (and so of
``microbroker.get_broker("rabbitmq", ...)``), else from the environment
variable ``MICRO_RABBITMQ_<OPTION>`` (``MICRO_RABBITMQ_EXCHANGE=events``),
else its default. The address (``amqp://user:pass@host:port/vhost``, or
``amqps://`` for TLS; several separated by commas for failover) gives the
user, password and virtual host; the ``user``, ``password`` and ``vhost``
options override them.
"""

from __future__ import annotations

import dataclasses
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote, unquote, urlsplit

DEFAULT_ADDRESS = "amqp://guest:guest@127.0.0.1:5672"
ENV_PREFIX = "MICRO_RABBITMQ_"
DEFAULT_PORTS = {"amqp": 5672, "amqps": 5671}

DEFAULT_MAX_MESSAGE_SIZE = 16 * 1024 * 1024

QueueType = Literal["classic", "quorum"]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One server to connect to, parsed from the address."""

    host: str
    port: int
    tls: bool
    user: str
    password: str
    vhost: str

    def url(self) -> str:
        """The URL for aiormq, with the credentials and the virtual host quoted."""
        scheme = "amqps" if self.tls else "amqp"
        auth = f"{quote(self.user, safe='')}:{quote(self.password, safe='')}@"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{auth}{host}:{self.port}/{quote(self.vhost, safe='')}"

    def __str__(self) -> str:
        """The endpoint without its password, for error messages."""
        scheme = "amqps" if self.tls else "amqp"
        vhost = "" if self.vhost == "/" else "/" + quote(self.vhost, safe="")
        return f"{scheme}://{self.user}@{self.host}:{self.port}{vhost}"


@dataclass(frozen=True, slots=True)
class RabbitMQOptions:
    """The broker's settings. Defaults are the ones documented in the README."""

    # Topology ---------------------------------------------------------------------------
    exchange: str = "micro"
    """The topic exchange every topic is published to (go-micro's default name)."""
    exchange_durable: bool = True
    """Declare the exchange durable (go-micro's default is not; see the README)."""
    durable_queues: bool = True
    """Queue groups get durable queues that outlive their consumers and a server restart."""
    queue_type: QueueType = "classic"
    """``classic`` or ``quorum`` for the queue groups' queues (broadcast queues are classic)."""
    queue_name: str = "{topic}:{queue}"
    """The name of a queue group's queue: ``{topic}``, ``{queue}`` and ``{exchange}`` stand
    for the subscription's."""
    delivery_limit: int = 0
    """Quorum queues only: the server's own give-up after this many deliveries (a backstop
    under the core's retry policy); 0 leaves it off."""

    # Delivery ---------------------------------------------------------------------------
    persistent: bool = True
    """Publish persistent messages (delivery mode 2): kept by a durable queue across a restart."""
    confirm: bool = True
    """Publisher confirms: a publish returns once the server has taken the message."""
    prefetch: int = 256
    """Unacknowledged messages the server sends to each subscription (``basic.qos``): the
    backpressure; a handler slower than its messages holds the rest on the server."""
    publish_timeout: float = 10.0
    """Seconds a publish waits for its confirm, and for a lost connection to come back."""
    drain_timeout: float = 10.0
    """Seconds :meth:`disconnect` waits for the publishes in flight to be confirmed."""

    # Connection -------------------------------------------------------------------------
    user: str | None = None
    """The user, instead of the address's (default ``guest``)."""
    password: str | None = None
    """The password, instead of the address's (default ``guest``)."""
    vhost: str | None = None
    """The virtual host, instead of the address's path (default ``/``)."""
    heartbeat: int = 10
    """Seconds between heartbeats; a server silent for three of them is a lost connection."""
    connect_timeout: float = 5.0
    """Seconds to wait for one server to accept the connection."""
    reconnect_delay: float = 0.1
    """Seconds before the first reconnection attempt; doubles per attempt."""
    max_reconnect_delay: float = 5.0
    """The cap on the wait between reconnection attempts."""
    connection_name: str | None = None
    """The connection name the server shows (``rabbitmqctl list_connections name``)."""
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    """The largest message (body and headers) the broker carries; RabbitMQ's own limit
    (``max_message_size``, 128 MiB by default) must be at least this."""

    # TLS --------------------------------------------------------------------------------
    tls: ssl.SSLContext | None = None
    """A ready TLS context for ``amqps://``; or use the file options below."""
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
    ) -> RabbitMQOptions:
        """Build the options from keyword arguments, then ``MICRO_RABBITMQ_*`` variables."""
        environ = os.environ if environ is None else environ
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(arguments) - set(known))
        if unknown:
            raise TypeError(
                f"the rabbitmq broker does not take option(s) {', '.join(unknown)}; "
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
        if not self.exchange or len(self.exchange.encode()) > 255:
            raise ValueError("exchange must be a name of 1 to 255 bytes")
        if self.exchange.startswith("amq."):
            raise ValueError(f"exchange {self.exchange!r}: names starting 'amq.' are the server's")
        if self.queue_type not in ("classic", "quorum"):
            raise ValueError(f"queue_type must be 'classic' or 'quorum', not {self.queue_type!r}")
        if self.queue_type == "quorum" and not self.durable_queues:
            raise ValueError("quorum queues are always durable: durable_queues=False cannot be")
        if "{queue}" not in self.queue_name:
            raise ValueError("queue_name must contain {queue}, or two groups would share a queue")
        try:
            self.queue_name.format(topic="t", queue="q", exchange="e")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"queue_name {self.queue_name!r} may use only {{topic}}, {{queue}} and "
                f"{{exchange}}: {exc}"
            ) from None
        if self.delivery_limit < 0:
            raise ValueError("delivery_limit must be 0 (off) or positive")
        if self.delivery_limit and self.queue_type != "quorum":
            raise ValueError("delivery_limit is a quorum queue setting: set queue_type='quorum'")
        if not 1 <= self.prefetch <= 65535:
            raise ValueError("prefetch must be between 1 and 65535 (basic.qos takes 16 bits)")
        if self.max_message_size < 1024:
            raise ValueError("max_message_size must be at least 1024 bytes")
        if self.heartbeat < 0:
            raise ValueError("heartbeat must be 0 (off) or positive")
        for name in ("publish_timeout", "drain_timeout", "connect_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.reconnect_delay <= 0 or self.max_reconnect_delay < self.reconnect_delay:
            raise ValueError("reconnect_delay must be positive and at most max_reconnect_delay")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("tls_cert_file and tls_key_file go together: give both or neither")

    def endpoints(self, address: str) -> list[Endpoint]:
        """The servers of ``address`` (comma-separated), completed by the options."""
        endpoints = [self._endpoint(part.strip()) for part in address.split(",") if part.strip()]
        if not endpoints:
            endpoints = [self._endpoint(DEFAULT_ADDRESS)]
        return endpoints

    def _endpoint(self, address: str) -> Endpoint:
        if "://" not in address:
            address = "amqp://" + address
        parts = urlsplit(address)
        scheme = parts.scheme.lower()
        if scheme not in DEFAULT_PORTS:
            raise ValueError(
                f"rabbitmq address {_censor(address)!r}: the scheme is amqp:// or amqps://, "
                f"not {parts.scheme}://"
            )
        if parts.query or parts.fragment:
            raise ValueError(
                f"rabbitmq address {_censor(address)!r}: query parameters are not read; "
                "use the broker's options (heartbeat=, connection_name=, tls_ca_file=...)"
            )
        try:
            port = parts.port or DEFAULT_PORTS[scheme]
        except ValueError:
            raise ValueError(f"rabbitmq address {_censor(address)!r}: bad port") from None
        host = parts.hostname or "127.0.0.1"
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        vhost = unquote(path) if path else "/"
        return Endpoint(
            host=host,
            port=port,
            tls=scheme == "amqps" or self.tls is not None,
            user=self.user if self.user is not None else unquote(parts.username or "guest"),
            password=(
                self.password if self.password is not None else unquote(parts.password or "guest")
            ),
            vhost=self.vhost if self.vhost is not None else vhost,
        )

    def tls_context(self) -> ssl.SSLContext:
        """The TLS context for ``amqps://`` endpoints.

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

    def group_queue(self, topic: str, queue: str) -> str:
        """The name of the queue of group ``queue`` on ``topic``."""
        return self.queue_name.format(topic=topic, queue=queue, exchange=self.exchange)


def _censor(address: str) -> str:
    parts = urlsplit(address if "://" in address else "amqp://" + address)
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
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
    except ValueError:
        kind = type(default).__name__
        raise ValueError(f"{ENV_PREFIX}{name.upper()}={raw!r} is not a valid {kind}") from None
    return raw
