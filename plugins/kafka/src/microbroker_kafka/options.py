"""The options of the kafka broker: checked once, read from the environment, made into aiokafka's.

Every option is a keyword argument of :class:`~microbroker_kafka.KafkaBroker`
(and so of ``microbroker.get_broker("kafka", ...)``). An option not given as
an argument is read from the environment variable ``MICRO_KAFKA_<OPTION>``
(``MICRO_KAFKA_PARTITIONS=8``, ``MICRO_KAFKA_ENVELOPE=1``...), so that a
service configured only through its environment can set all of them; a
keyword argument wins over the variable. A value that cannot be used is a
``ValueError`` naming the variable.
"""

from __future__ import annotations

import dataclasses
import os
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
OffsetReset = Literal["latest", "earliest"]
Compression = Literal["gzip", "snappy", "lz4", "zstd"]
Acks = Literal[0, 1, "all"]
Client = Literal["aiokafka", "confluent"]

ENV_PREFIX = "MICRO_KAFKA_"
DEFAULT_PARTITIONS = 4
"""Partitions of a topic this broker creates, unless ``partitions`` says otherwise.

Four, not the server's ``num.partitions``: Kafka ships that as 1, which leaves
every member of a queue group but one without messages; tansu does not report
it (DescribeConfigs answers no entries); aiokafka's CreateTopics (v0 to v3)
cannot ask for "the server's default" (-1 needs v4); and the broker's
capabilities (``queue_groups``, ``ordering``) must be known before it connects.
Four lets a group of up to four members share a topic while a broadcast
subscriber still reads few partitions; more partitions split the producer's
batches further (one per partition).
"""

_SASL_MECHANISMS: tuple[str, ...] = get_args(SaslMechanism)
_COMPRESSIONS: tuple[str, ...] = get_args(Compression)
_CLIENTS: tuple[str, ...] = get_args(Client)
_SCHEMES = ("kafka://", "tcp://", "plaintext://", "ssl://", "sasl_ssl://", "sasl_plaintext://")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
_NONE = ("", "none", "null")

#: Room a record needs beyond its body and headers: the key and the batch framing.
HEADROOM = 256 * 1024

#: Options that must be above zero.
_POSITIVE = (
    "batch_size",
    "max_message_size",
    "partitions",
    "replication_factor",
    "session_timeout",
    "heartbeat_interval",
    "max_poll_records",
    "commit_interval",
    "join_timeout",
    "metadata_refresh",
    "fetch_wait",
    "rebalance_timeout",
    "drain_timeout",
    "request_timeout",
)


@dataclass(frozen=True, slots=True)
class KafkaOptions:
    """Every option of :class:`~microbroker_kafka.KafkaBroker`, validated.

    Times are in seconds and sizes in bytes, as elsewhere in microbroker; they
    become aiokafka's ``*_ms`` arguments here and nowhere else. Build it with
    :meth:`from_arguments` to read ``MICRO_KAFKA_*`` variables too.
    """

    bootstrap_servers: tuple[str, ...] = ("127.0.0.1:9092",)
    """From the broker's address (``MICRO_BROKER_ADDRESS``), not an option of its own."""
    client: Client = "aiokafka"
    """The Kafka client underneath: ``"aiokafka"``, or ``"confluent"`` (librdkafka, through
    confluent-kafka: ``pip install microbroker-kafka[confluent]``)."""
    client_id: str = "microbroker"
    # Producer.
    linger: float = 0.005
    """Seconds the producer waits to fill a batch before it sends it."""
    batch_size: int = 64 * 1024
    """Bytes of records per partition the producer gathers into one batch."""
    max_message_size: int = 1024 * 1024
    """The largest message (body and headers) publish accepts: ``capabilities.max_message_size``."""
    acks: Acks = "all"
    """Replicas that must have a record before the server confirms it."""
    confirm: bool = True
    """publish() returns once the server confirmed the record (else once it is buffered)."""
    compression: Compression | None = None
    # Wire format.
    envelope: bool = False
    """Carry headers and body in go-micro's JSON envelope, ``{"Header": {...}, "Body":
    "<base64>"}``, as the record's value (go-micro's kafka plugin's format), instead of
    the body as the value and the headers as record headers."""
    # Topics.
    auto_create_topics: bool = True
    """Create a missing topic on first publish or subscribe (with ``partitions``)."""
    partitions: int = DEFAULT_PARTITIONS
    """Partitions of the topics this broker creates (see :data:`DEFAULT_PARTITIONS`)."""
    replication_factor: int = 1
    # Consumer.
    offset_reset: OffsetReset = "latest"
    """Where a group with no committed offset starts on a partition."""
    session_timeout: float = 10.0
    """Seconds without heartbeat after which the group evicts a member (and rebalances)."""
    heartbeat_interval: float = 1.0
    max_poll_records: int = 2000
    commit_interval: float = 0.2
    """Most seconds an acked offset waits before it is committed (commits are batched)."""
    fetch_wait: float = 0.1
    """Most seconds a fetch waits on the server for new records (lower: less latency)."""
    rebalance_timeout: float = 10.0
    """Seconds the group waits for its members to rejoin during a rebalance."""
    join_timeout: float = 60.0
    """Seconds subscribe() waits for the group to assign this member its partitions."""
    metadata_refresh: float = 10.0
    """Seconds between metadata refreshes: partitions added to a topic are seen this late."""
    drain_timeout: float = 10.0
    """Seconds unsubscribe/disconnect wait for a running handler before they stop it."""
    # Connection and security.
    request_timeout: float = 30.0
    tls: ssl.SSLContext | None = None
    """A ready TLS context. From the environment: ``MICRO_KAFKA_TLS=1`` (the system's CAs)."""
    tls_ca_file: str | None = None
    """A PEM file of the CAs that sign the servers' certificates (TLS on, without ``tls``)."""
    tls_cert_file: str | None = None
    """A PEM client certificate, for servers that ask for one (with ``tls_key_file``)."""
    tls_key_file: str | None = None
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None
    persistence: bool = True
    """Whether the server keeps messages across its restarts (false for in-memory servers)."""

    def __post_init__(self) -> None:
        for name in _POSITIVE:
            value = getattr(self, name)
            if type(value) is bool or not isinstance(value, int | float) or not value > 0:
                raise ValueError(f"kafka option {name} must be positive, not {value!r}")
        if self.linger < 0:
            raise ValueError(f"kafka option linger cannot be negative, not {self.linger!r}")
        if self.heartbeat_interval >= self.session_timeout:
            raise ValueError(
                f"kafka option heartbeat_interval ({self.heartbeat_interval}) must be below "
                f"session_timeout ({self.session_timeout})"
            )
        if self.client not in _CLIENTS:
            raise ValueError(
                f"kafka option client is one of {', '.join(_CLIENTS)}, not {self.client!r}"
            )
        if self.client == "confluent" and self.tls is not None:
            raise ValueError(
                "kafka option tls (an SSLContext) cannot be handed to librdkafka: with "
                "client='confluent' give tls_ca_file (and tls_cert_file, tls_key_file)"
            )
        if self.acks not in (0, 1, "all"):
            raise ValueError(f"kafka option acks is 0, 1 or 'all', not {self.acks!r}")
        if self.compression is not None and self.compression not in _COMPRESSIONS:
            raise ValueError(
                f"kafka option compression is one of {', '.join(_COMPRESSIONS)} or None, "
                f"not {self.compression!r}"
            )
        if self.offset_reset not in ("latest", "earliest"):
            raise ValueError(
                f"kafka option offset_reset is 'latest' or 'earliest', not {self.offset_reset!r}"
            )
        if self.sasl_mechanism is not None:
            if self.sasl_mechanism not in _SASL_MECHANISMS:
                raise ValueError(
                    f"kafka option sasl_mechanism is one of {', '.join(_SASL_MECHANISMS)}, "
                    f"not {self.sasl_mechanism!r}"
                )
            if self.sasl_username is None or self.sasl_password is None:
                raise ValueError("kafka SASL needs sasl_username and sasl_password")
        elif self.sasl_username is not None:
            raise ValueError("kafka option sasl_username needs sasl_mechanism (e.g. 'PLAIN')")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError(
                "kafka options tls_cert_file and tls_key_file go together: give both or neither"
            )
        if self.tls is not None and (self.tls_ca_file or self.tls_cert_file):
            raise ValueError(
                "give kafka option tls (an SSLContext) or the tls_*_file options, not both"
            )
        if not self.bootstrap_servers:
            raise ValueError("a kafka address names at least one host:port")

    @classmethod
    def from_arguments(
        cls,
        arguments: Mapping[str, Any],
        environ: Mapping[str, str] | None = None,
        *,
        bootstrap_servers: tuple[str, ...] | None = None,
    ) -> KafkaOptions:
        """The options from keyword ``arguments``, then ``MICRO_KAFKA_<OPTION>`` variables.

        An argument wins over its variable. Raises ``TypeError`` for an unknown
        argument and ``ValueError`` for a value that cannot be used, naming the
        variable when it came from one.
        """
        environ = os.environ if environ is None else environ
        unknown = set(arguments) - set(OPTION_NAMES)
        if unknown:
            raise TypeError(
                f"unknown kafka option(s): {', '.join(sorted(unknown))}; "
                f"the options are: {', '.join(sorted(OPTION_NAMES))}"
            )
        values: dict[str, Any] = dict(arguments)
        from_env: dict[str, str] = {}
        for name in OPTION_NAMES:
            if name in values:
                continue
            variable = ENV_PREFIX + name.upper()
            raw = environ.get(variable)
            if raw is not None:
                values[name] = _from_env(name, variable, raw)
                from_env[name] = variable
        if bootstrap_servers is not None:
            values["bootstrap_servers"] = bootstrap_servers
        try:
            return cls(**values)
        except ValueError as exc:
            named = [variable for name, variable in from_env.items() if name in str(exc)]
            if not named:
                raise
            raise ValueError(f"{exc} (set by {', '.join(named)})") from None

    def replace(self, **changes: Any) -> KafkaOptions:
        """These options with ``changes`` (a subscription's own); ``TypeError`` for unknown ones."""
        unknown = set(changes) - set(OPTION_NAMES)
        if unknown:
            raise TypeError(f"unknown kafka subscribe option(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)

    @property
    def security_protocol(self) -> str:
        """aiokafka's security protocol, from the TLS and SASL options."""
        tls = self.tls is not None or bool(self.tls_ca_file or self.tls_cert_file)
        if self.sasl_mechanism is not None:
            return "SASL_SSL" if tls else "SASL_PLAINTEXT"
        return "SSL" if tls else "PLAINTEXT"

    def tls_context(self) -> ssl.SSLContext | None:
        """The TLS context to connect with, or ``None`` for plaintext.

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
            raise ValueError(f"cannot load kafka option {option} {path!r}: {exc}") from exc
        return context

    def common_kwargs(self, tls: ssl.SSLContext | None) -> dict[str, Any]:
        """Arguments every aiokafka client (producer, consumer, admin) takes."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": list(self.bootstrap_servers),
            "client_id": self.client_id,
            "request_timeout_ms": int(self.request_timeout * 1000),
            "metadata_max_age_ms": int(self.metadata_refresh * 1000),
            "security_protocol": self.security_protocol,
        }
        if tls is not None:
            kwargs["ssl_context"] = tls
        if self.sasl_mechanism is not None:
            kwargs["sasl_mechanism"] = self.sasl_mechanism
            kwargs["sasl_plain_username"] = self.sasl_username
            kwargs["sasl_plain_password"] = self.sasl_password
        return kwargs

    @property
    def max_request_size(self) -> int:
        """The producer's request limit: a message of ``max_message_size`` plus its framing."""
        # The envelope carries the body in base64 (4 bytes for 3) and the headers in JSON.
        size = self.max_message_size * 4 // 3 if self.envelope else self.max_message_size
        return size + HEADROOM

    def producer_kwargs(self, tls: ssl.SSLContext | None) -> dict[str, Any]:
        """Arguments for ``AIOKafkaProducer``."""
        return {
            **self.common_kwargs(tls),
            "acks": -1 if self.acks == "all" else self.acks,
            "linger_ms": int(self.linger * 1000),
            "max_batch_size": self.batch_size,
            "max_request_size": self.max_request_size,
            "compression_type": self.compression,
        }

    def consumer_kwargs(self, tls: ssl.SSLContext | None) -> dict[str, Any]:
        """Arguments for ``AIOKafkaConsumer`` (the group id is added per subscription)."""
        return {
            **self.common_kwargs(tls),
            "enable_auto_commit": False,
            "auto_offset_reset": self.offset_reset,
            "session_timeout_ms": int(self.session_timeout * 1000),
            "heartbeat_interval_ms": int(self.heartbeat_interval * 1000),
            "max_poll_records": self.max_poll_records,
            "fetch_max_wait_ms": int(self.fetch_wait * 1000),
            "retry_backoff_ms": 50,
            # A record as large as the producer allows must fit in one fetch.
            "max_partition_fetch_bytes": max(self.max_request_size, 1024 * 1024),
        }

    # librdkafka (client="confluent"). -------------------------------------------------

    def librdkafka_common(self) -> dict[str, Any]:
        """librdkafka properties every confluent-kafka client takes (times in ms, as it wants)."""
        config: dict[str, Any] = {
            "bootstrap.servers": ",".join(self.bootstrap_servers),
            "client.id": self.client_id,
            "socket.timeout.ms": int(self.request_timeout * 1000),
            "topic.metadata.refresh.interval.ms": int(self.metadata_refresh * 1000),
            "security.protocol": self.security_protocol,
            "retry.backoff.ms": 50,
        }
        if self.tls_ca_file:
            config["ssl.ca.location"] = self.tls_ca_file
        if self.tls_cert_file and self.tls_key_file:
            config["ssl.certificate.location"] = self.tls_cert_file
            config["ssl.key.location"] = self.tls_key_file
        if self.sasl_mechanism is not None:
            config["sasl.mechanism"] = self.sasl_mechanism
            config["sasl.username"] = self.sasl_username
            config["sasl.password"] = self.sasl_password
        return config

    def librdkafka_producer(self) -> dict[str, Any]:
        """librdkafka properties of the producer."""
        return {
            **self.librdkafka_common(),
            "acks": "all" if self.acks == "all" else self.acks,
            "linger.ms": self.linger * 1000,
            "batch.size": self.batch_size,
            "message.max.bytes": self.max_request_size,
            "compression.type": self.compression or "none",
            # Retried within request_timeout, as aiokafka's request timeout bounds a send.
            "message.timeout.ms": max(int(self.request_timeout * 1000), 1000),
        }

    def librdkafka_consumer(self, group: str | None) -> dict[str, Any]:
        """librdkafka properties of a consumer (``group``: its queue group, if any)."""
        config: dict[str, Any] = {
            **self.librdkafka_common(),
            # A consumer without a queue assigns itself its partitions and commits nothing;
            # librdkafka wants a group id all the same.
            "group.id": group or f"{self.client_id}-unused",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": self.offset_reset,
            "session.timeout.ms": int(self.session_timeout * 1000),
            "heartbeat.interval.ms": int(self.heartbeat_interval * 1000),
            # Also the rebalance timeout librdkafka sends: aiokafka's max_poll_interval default
            # (a handler may run this long before the member is taken to be stuck).
            "max.poll.interval.ms": max(300_000, int(self.session_timeout * 1000)),
            "partition.assignment.strategy": "range",
            "fetch.wait.max.ms": int(self.fetch_wait * 1000),
            "max.partition.fetch.bytes": max(self.max_request_size, 1024 * 1024),
            "fetch.max.bytes": max(self.max_request_size, 50 * 1024 * 1024),
        }
        return config


OPTION_NAMES: tuple[str, ...] = tuple(
    field.name for field in dataclasses.fields(KafkaOptions) if field.name != "bootstrap_servers"
)
"""The broker's keyword options, each also read from ``MICRO_KAFKA_<NAME>``."""


# Reading the environment. -----------------------------------------------------------


def _boolean(raw: str) -> bool:
    text = raw.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError("is not a boolean (use 1/0, true/false, yes/no or on/off)")


def _integer(raw: str) -> int:
    try:
        return int(raw.strip())
    except ValueError:
        raise ValueError("is not an integer") from None


def _number(raw: str) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise ValueError("is not a number (seconds)") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError("is not a finite number")
    return value


def _optional(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse_optional(raw: str) -> Any:
        return None if raw.strip().lower() in _NONE else parse(raw)

    return parse_optional


def _choice(*choices: Any) -> Callable[[str], Any]:
    def parse_choice(raw: str) -> Any:
        text = raw.strip()
        for choice in choices:
            if text.lower() == str(choice).lower():
                return choice
        raise ValueError(f"is not one of {', '.join(str(c) for c in choices)}")

    return parse_choice


def _tls(raw: str) -> ssl.SSLContext | None:
    # A context cannot be written in a variable: on means the system's CAs.
    return ssl.create_default_context() if _boolean(raw) else None


def _text(raw: str) -> str:
    return raw


_PARSERS: dict[str, Callable[[str], Any]] = {
    "acks": _choice(0, 1, "all"),
    "client": _choice(*_CLIENTS),
    "compression": _optional(_choice(*_COMPRESSIONS)),
    "offset_reset": _choice("latest", "earliest"),
    "sasl_mechanism": _optional(_choice(*_SASL_MECHANISMS)),
    "tls": _tls,
    "tls_ca_file": _optional(_text),
    "tls_cert_file": _optional(_text),
    "tls_key_file": _optional(_text),
    "sasl_username": _text,
    "sasl_password": _text,
}


def _parser(name: str) -> Callable[[str], Any]:
    parse = _PARSERS.get(name)
    if parse is not None:
        return parse
    default = KafkaOptions.__dataclass_fields__[name].default
    if isinstance(default, bool):
        return _boolean
    if isinstance(default, int):
        return _integer
    if isinstance(default, float):
        return _number
    return _text


def _from_env(name: str, variable: str, raw: str) -> Any:
    try:
        return _parser(name)(raw)
    except ValueError as exc:
        raise ValueError(f"{variable}={raw!r} {exc} (kafka option {name})") from None


def parse_address(address: str) -> tuple[str, ...]:
    """``"host:port,host:port"`` (an optional ``kafka://`` or ``tcp://`` scheme each) as a tuple."""
    servers: list[str] = []
    for part in address.split(","):
        part = part.strip()
        lowered = part.lower()
        for scheme in _SCHEMES:
            if lowered.startswith(scheme):
                part = part[len(scheme) :]
                break
        part = part.rstrip("/")
        if not part:
            continue
        host, sep, port = part.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(
                f"invalid kafka address {address!r}: use host:port[,host:port...], "
                "for example 127.0.0.1:9092"
            )
        servers.append(part)
    if not servers:
        raise ValueError(f"invalid kafka address {address!r}: no host:port in it")
    return tuple(servers)
