"""The options of the kafka broker, checked once and turned into aiokafka keyword arguments."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any, Literal

SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
OffsetReset = Literal["latest", "earliest"]
Compression = Literal["gzip", "snappy", "lz4", "zstd"]

_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
_SCHEMES = ("kafka://", "tcp://", "plaintext://", "ssl://", "sasl_ssl://", "sasl_plaintext://")

#: Room a record needs beyond its body: headers, key and the batch framing.
HEADROOM = 256 * 1024


@dataclass(frozen=True, slots=True)
class KafkaOptions:
    """Every option of :class:`~microbroker_kafka.KafkaBroker`, validated.

    Times are in seconds and sizes in bytes, as elsewhere in microbroker; they
    become aiokafka's ``*_ms`` arguments here and nowhere else.
    """

    bootstrap_servers: tuple[str, ...] = ("127.0.0.1:9092",)
    client_id: str = "microbroker"
    # Producer.
    linger: float = 0.005
    """Seconds the producer waits to fill a batch before it sends it."""
    batch_size: int = 64 * 1024
    """Bytes of records per partition the producer gathers into one batch."""
    max_message_size: int = 1024 * 1024
    """Largest body accepted by publish; larger ones raise PublishError before sending."""
    acks: Literal[0, 1, "all"] = "all"
    """Replicas that must have a record before the server confirms it."""
    confirm: bool = True
    """publish() returns once the server confirmed the record (else once it is buffered)."""
    compression: Compression | None = None
    # Topics.
    auto_create_topics: bool = True
    """Create a missing topic on first publish or subscribe (with ``partitions``)."""
    partitions: int = 1
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
    redelivery_delay: float = 0.005
    """Seconds before the first redelivery of a nacked message; doubles with each attempt."""
    max_redelivery_delay: float = 1.0
    max_deliver: int | None = None
    """Deliveries after which a still-nacked message is given up (reported, then committed)."""
    drain_timeout: float = 10.0
    """Seconds unsubscribe/disconnect wait for a running handler before they stop it."""
    # Connection and security.
    request_timeout: float = 30.0
    tls: ssl.SSLContext | None = None
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None
    persistence: bool = True
    """Whether the server keeps messages across its restarts (false for in-memory servers)."""

    def __post_init__(self) -> None:
        def positive(name: str, value: float) -> None:
            if not value > 0:
                raise ValueError(f"kafka option {name} must be positive, not {value!r}")

        for name in (
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
            "max_redelivery_delay",
            "drain_timeout",
            "request_timeout",
        ):
            positive(name, getattr(self, name))
        if self.linger < 0 or self.redelivery_delay < 0:
            raise ValueError("kafka options linger and redelivery_delay cannot be negative")
        if self.heartbeat_interval >= self.session_timeout:
            raise ValueError("kafka option heartbeat_interval must be below session_timeout")
        if self.max_deliver is not None and self.max_deliver < 1:
            raise ValueError("kafka option max_deliver must be at least 1, or None")
        if self.acks not in (0, 1, "all"):
            raise ValueError(f"kafka option acks is 0, 1 or 'all', not {self.acks!r}")
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
        if not self.bootstrap_servers:
            raise ValueError("a kafka address names at least one host:port")

    @property
    def security_protocol(self) -> str:
        """aiokafka's security protocol, from the TLS and SASL options."""
        if self.sasl_mechanism is not None:
            return "SASL_SSL" if self.tls is not None else "SASL_PLAINTEXT"
        return "SSL" if self.tls is not None else "PLAINTEXT"

    def common_kwargs(self) -> dict[str, Any]:
        """Arguments every aiokafka client (producer, consumer, admin) takes."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": list(self.bootstrap_servers),
            "client_id": self.client_id,
            "request_timeout_ms": int(self.request_timeout * 1000),
            "metadata_max_age_ms": int(self.metadata_refresh * 1000),
            "security_protocol": self.security_protocol,
        }
        if self.tls is not None:
            kwargs["ssl_context"] = self.tls
        if self.sasl_mechanism is not None:
            kwargs["sasl_mechanism"] = self.sasl_mechanism
            kwargs["sasl_plain_username"] = self.sasl_username
            kwargs["sasl_plain_password"] = self.sasl_password
        return kwargs

    @property
    def max_request_size(self) -> int:
        return self.max_message_size + HEADROOM

    def producer_kwargs(self) -> dict[str, Any]:
        """Arguments for ``AIOKafkaProducer``."""
        return {
            **self.common_kwargs(),
            "acks": -1 if self.acks == "all" else self.acks,
            "linger_ms": int(self.linger * 1000),
            "max_batch_size": self.batch_size,
            "max_request_size": self.max_request_size,
            "compression_type": self.compression,
        }

    def consumer_kwargs(self) -> dict[str, Any]:
        """Arguments for ``AIOKafkaConsumer`` (the group id is added per subscription)."""
        return {
            **self.common_kwargs(),
            "enable_auto_commit": False,
            "auto_offset_reset": self.offset_reset,
            "session_timeout_ms": int(self.session_timeout * 1000),
            "heartbeat_interval_ms": int(self.heartbeat_interval * 1000),
            "max_poll_records": self.max_poll_records,
            # A record as large as the producer allows must fit in one fetch.
            "max_partition_fetch_bytes": max(self.max_request_size, 1024 * 1024),
        }


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
