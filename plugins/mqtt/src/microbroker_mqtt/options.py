"""The options of the MQTT broker: address, protocol, session, QoS, authentication and TLS.

Every option is a keyword argument of :class:`~microbroker_mqtt.MqttBroker`
(and so of ``microbroker.get_broker("mqtt", ...)``). An option not given as an
argument is read from the environment variable ``MICRO_MQTT_<OPTION>``
(``MICRO_MQTT_PROTOCOL=3.1.1``, ``MICRO_MQTT_USERNAME=...``), so that a service
configured only through its environment can use all of them.
"""

from __future__ import annotations

import dataclasses
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

DEFAULT_ADDRESS = "mqtt://127.0.0.1:1883"
ENV_PREFIX = "MICRO_MQTT_"

Protocol = Literal["5", "3.1.1"]

#: The largest MQTT packet (the protocol's four-byte "remaining length").
MAX_PACKET = 268_435_455
#: Room kept in a packet for the topic, properties or envelope fields.
PACKET_HEADROOM = 64 * 1024

_PROTOCOLS: dict[str, Protocol] = {
    "5": "5",
    "5.0": "5",
    "v5": "5",
    "mqttv5": "5",
    "3.1.1": "3.1.1",
    "311": "3.1.1",
    "4": "3.1.1",
    "v311": "3.1.1",
    "mqttv311": "3.1.1",
}
_SCHEMES = {"mqtt": False, "tcp": False, "mqtts": True, "ssl": True, "tls": True}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass(slots=True)
class MqttOptions:
    """The broker's settings. Defaults are the ones documented in the README."""

    # Protocol and session -------------------------------------------------------------
    protocol: Protocol = "5"
    """``"5"`` (MQTT 5, the default) or ``"3.1.1"``."""
    client_id: str | None = None
    """A stable client id, so that a restarted process resumes its session (and
    receives what was queued for it). ``None``: a random id per broker object."""
    clean_start: bool = False
    """Start with a fresh session. Off by default: a persistent session keeps the
    subscriptions, and the QoS 1/2 messages that arrive while the client is away."""
    session_expiry: int = 3600
    """MQTT 5: seconds the server keeps the session after the connection drops.
    (MQTT 3.1.1 has no expiry: the server keeps it until its own limit.)"""
    envelope: bool | None = None
    """Carry headers and body in go-micro's JSON envelope,
    ``{"Header": {...}, "Body": "<base64>"}``. ``None``: only under 3.1.1, which
    has no user properties; under MQTT 5 headers travel as user properties."""

    # Delivery -------------------------------------------------------------------------
    qos: int = 1
    """The QoS of publishes and subscriptions: 0 at most once, 1 at least once,
    2 exactly once (between client and server). Each call may override it."""
    max_inflight: int = 1000
    """QoS 1/2 publishes sent and not yet acknowledged by the server; beyond it
    :meth:`publish` waits. The server's Receive Maximum lowers it."""
    publish_timeout: float = 10.0
    """Seconds a publish waits for room in the in-flight window (and, with
    ``confirm=True``, for the server's acknowledgement) before it raises."""
    receive_maximum: int = 1000
    """MQTT 5: QoS 1/2 messages the server may send before this client has
    acknowledged them (the Receive Maximum of CONNECT). A message is
    acknowledged only once its handlers have settled it, so this bounds the
    messages received and not yet handled. Under 3.1.1 the server decides
    (Mosquitto: ``max_inflight_messages``, 20 by default)."""
    max_pending: int = 10_000
    """Deliveries received and not yet handled, over all subscriptions, before
    the broker stops reading from the socket: a backstop for QoS 0 messages,
    which no window bounds, and for a message fanned out to many subscriptions."""
    resume_timeout: float = 30.0
    """Seconds the messages of a resumed session wait for the subscription they
    belong to (they can arrive before the application subscribes again). Still
    unclaimed then, they belong to a subscription of the session that this
    process no longer makes: they are acknowledged and dropped, with a warning."""
    max_message_size: int | None = None
    """Largest message (body and headers) :meth:`publish` accepts, declared as
    ``capabilities.max_message_size``; ``None``: what one MQTT packet carries."""

    # Connection -----------------------------------------------------------------------
    connect_timeout: float = 5.0
    """Seconds :meth:`connect` waits for the server's CONNACK."""
    keepalive: int = 60
    """Seconds between keep-alive pings."""
    reconnect_delay: float = 1.0
    """Seconds between reconnection attempts after the connection is lost."""
    reconnect_retries: int = -1
    """Reconnection attempts before giving up; -1 never gives up."""
    drain_timeout: float = 10.0
    """Seconds :meth:`disconnect` waits for unacknowledged publishes and queued deliveries."""

    # Authentication and TLS -----------------------------------------------------------
    username: str | None = None
    password: str | None = None
    tls: ssl.SSLContext | bool = False
    """``True`` for TLS with the system's CA store, or a ready ``SSLContext``.
    An ``mqtts://`` (or ``ssl://``) address turns TLS on too."""
    tls_ca_file: str | None = None
    """A CA bundle to verify the server with (turns TLS on)."""
    tls_cert_file: str | None = None
    """A client certificate, for servers that require one (with ``tls_key_file``)."""
    tls_key_file: str | None = None

    @classmethod
    def from_arguments(
        cls, arguments: Mapping[str, Any], environ: Mapping[str, str] | None = None
    ) -> MqttOptions:
        """Build the options from keyword arguments, then ``MICRO_MQTT_*`` variables."""
        environ = os.environ if environ is None else environ
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(arguments) - set(names))
        if unknown:
            raise TypeError(
                f"the mqtt broker does not take option(s) {', '.join(unknown)}; "
                f"it takes: {', '.join(names)}"
            )
        values: dict[str, Any] = {}
        for name, spec in names.items():
            if name in arguments and arguments[name] is not None:
                values[name] = arguments[name]
                continue
            raw = environ.get(ENV_PREFIX + name.upper())
            if raw is not None and name != "tls":
                values[name] = _parse(name, str(spec.type), raw)
            elif raw is not None:
                values[name] = _parse_bool(name, raw)
        options = cls(**values)
        options.validate()
        return options

    def validate(self) -> None:
        """Normalise the protocol and raise ``ValueError`` for settings that cannot work."""
        protocol = _PROTOCOLS.get(str(self.protocol).strip().lower())
        if protocol is None:
            raise ValueError(
                f"unknown MQTT protocol {self.protocol!r}: use '5' (the default) or '3.1.1'"
            )
        self.protocol = protocol
        check_qos(self.qos)
        if self.max_inflight < 1:
            raise ValueError("max_inflight must be at least 1")
        if self.max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        if not 1 <= self.receive_maximum <= 65535:
            raise ValueError("receive_maximum is a number of messages from 1 to 65535")
        if self.resume_timeout < 0:
            raise ValueError("resume_timeout cannot be negative")
        if not 0 <= self.session_expiry <= 0xFFFFFFFF:
            raise ValueError("session_expiry is seconds from 0 to 4294967295")
        if self.password is not None and self.username is None:
            raise ValueError("a password needs a username: pass username=... too")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together: pass both")
        if self.client_id is not None and not self.client_id:
            raise ValueError(
                "client_id cannot be empty: pass a stable id, or None for a random one"
            )

    @property
    def uses_envelope(self) -> bool:
        """Whether messages travel in go-micro's JSON envelope."""
        return self.protocol == "3.1.1" if self.envelope is None else self.envelope

    @property
    def body_limit(self) -> int:
        """The largest body a publish accepts."""
        if self.max_message_size is not None:
            return self.max_message_size
        room = MAX_PACKET - PACKET_HEADROOM
        # The envelope carries the body in base64: four bytes for every three.
        return room * 3 // 4 if self.uses_envelope else room

    def ssl_context(self, secure_scheme: bool) -> ssl.SSLContext | bool:
        """The TLS setting for the connection: a context, or ``False`` for plain TCP."""
        if isinstance(self.tls, ssl.SSLContext):
            return self.tls
        if not (self.tls or secure_scheme or self.tls_ca_file or self.tls_cert_file):
            return False
        context = ssl.create_default_context(cafile=self.tls_ca_file)
        if self.tls_cert_file is not None:
            context.load_cert_chain(self.tls_cert_file, self.tls_key_file)
        return context


def check_qos(qos: object) -> int:
    """Return ``qos`` when it is 0, 1 or 2; raise ``ValueError`` otherwise."""
    if type(qos) is not int or qos not in (0, 1, 2):
        raise ValueError(f"MQTT QoS is 0, 1 or 2, not {qos!r}")
    return qos


def parse_address(address: str) -> tuple[str, int, bool, str | None, str | None]:
    """Split ``mqtt://[user:password@]host[:port]`` into host, port, TLS, user, password.

    Accepted schemes: ``mqtt``/``tcp`` (port 1883) and ``mqtts``/``ssl``/``tls``
    (port 8883). Without a scheme, ``host[:port]`` is plain MQTT.
    """
    text = address.strip()
    if "://" not in text:
        text = "mqtt://" + text
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        raise ValueError(
            f"unsupported MQTT address {address!r}: use mqtt://host:port or mqtts://host:port"
        )
    secure = _SCHEMES[scheme]
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"bad port in MQTT address {address!r}: {exc}") from exc
    host = parts.hostname
    if not host:
        raise ValueError(f"no host in MQTT address {address!r}: use mqtt://host:port")
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    return host, port or (8883 if secure else 1883), secure, user, password


def _parse_bool(name: str, raw: str) -> bool:
    text = raw.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"{ENV_PREFIX}{name.upper()}={raw!r}: use 1/0, true/false, yes/no")


def _parse(name: str, annotation: str, raw: str) -> Any:
    if annotation.startswith("bool"):
        return _parse_bool(name, raw)
    try:
        if annotation.startswith("int"):
            return int(raw)
        if annotation.startswith("float"):
            return float(raw)
    except ValueError:
        raise ValueError(f"{ENV_PREFIX}{name.upper()}={raw!r} is not a number") from None
    return raw
