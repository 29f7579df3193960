"""The NATS broker: core NATS (at most once) or JetStream (at least once), and request/reply."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import ssl
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext, api

from microbroker import (
    Broker,
    Capabilities,
    Delivery,
    Handler,
    InvalidTopic,
    Message,
    NotConnected,
    PublishError,
    Subscriber,
    Wildcards,
    check_topic,
    dispatcher,
    report_error,
)

from ._client import (
    WRITE_DONE,
    WRITE_FALLBACK,
    WRITE_FORCE,
    FastClient,
    Headers,
    Sink,
    client_class,
    parse_header_lines,
    round_trip,
)
from .errors import NatsAuthError, NatsConnectError, NoResponders, RequestTimeout, StreamError
from .options import DEFAULT_ADDRESS, NatsOptions, parse_servers

logger = logging.getLogger("microbroker.nats")

CONTENT_TYPE = "Content-Type"
_CONTENT_TYPE_LINE = b"\r\nContent-Type:"
_CONTENT_TYPE_SKIP = len(_CONTENT_TYPE_LINE)
# Content-Type values as they come off the wire (with any spaces) -> the decoded value.
_content_types: dict[bytes, str] = {}
_CONTENT_TYPES_KEPT = 64

_CLIENT_CERT_HINT = (
    "a server that verifies clients (verify: true) needs tls_cert_file= and tls_key_file=, "
    "a client certificate issued by a CA it trusts"
)

WILDCARDS = Wildcards(separator=".", one="*", many=">")
#: Headers and protocol framing a message may need on top of its body, checked
#: exactly only for bodies this close to the server's limit.
_HEADER_SLACK = 64 * 1024
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9_-]")

Responder = Callable[["NatsDelivery"], Awaitable[Message | None]]
"""A request handler for :meth:`NatsBroker.serve`: returns the reply, or ``None`` for none."""


def _core_capabilities(max_payload: int) -> Capabilities:
    return Capabilities(
        queue_groups=True,
        ack=False,
        at_least_once=False,
        persistence=False,
        ordering=True,
        reconnect=True,
        wildcards=WILDCARDS,
        max_message_size=max_payload,
    )


def _jetstream_capabilities(max_payload: int, storage: str) -> Capabilities:
    return Capabilities(
        queue_groups=True,
        ack=True,
        at_least_once=True,
        persistence=storage == "file",
        ordering=True,
        reconnect=True,
        wildcards=WILDCARDS,
        max_message_size=max_payload,
    )


class NatsDelivery(Delivery):
    """A delivery from NATS. It knows the request's reply subject, if any, and can answer it.

    Headers that arrive as a raw NATS header block are parsed the first time
    :attr:`message` is read: a typed subscriber that never reads its metadata
    only pays for finding ``Content-Type``.
    """

    # ``body`` is a plain attribute here (Delivery's is a property): read once per message.
    __slots__ = ("_msg", "_nc", "_raw_headers", "_reply", "body")

    def __init__(
        self,
        topic: str,
        body: bytes,
        headers: Headers,
        queue: str | None,
        reply: str,
        nc: NATS,
        attempt: int = 1,
    ) -> None:
        """``headers``: a dict, ``None``, or the raw NATS header block (parsed when read)."""
        # Set directly rather than through Delivery.__init__: this runs once per message.
        self.topic = topic
        self.body = body  # type: ignore[misc]  # a slot here, a property in Delivery
        if type(headers) is bytes:
            self._msg: Message | None = None
            self._raw_headers: bytes | None = headers
        else:
            self._msg = Message(body, {} if headers is None else headers)  # type: ignore[arg-type]
            self._raw_headers = None
        self.queue = queue
        self.attempt = attempt
        self._state = 0
        self._reply = reply
        self._nc = nc

    @property
    def message(self) -> Message:
        """The message: the body and its headers."""
        message = self._msg
        if message is None:
            raw = self._raw_headers
            message = self._msg = Message(self.body, parse_header_lines(raw[10:]) if raw else {})
        return message

    @message.setter
    def message(self, message: Message) -> None:
        self._msg = message
        self.body = message.body  # type: ignore[misc]
        self._raw_headers = None

    @property
    def content_type(self) -> str | None:
        message = self._msg
        if message is not None:
            return message.header(CONTENT_TYPE)
        raw = self._raw_headers
        assert raw is not None
        # Every header line follows a CRLF (the block starts with "NATS/1.0\r\n");
        # the last of several wins, as when the block is parsed.
        start = raw.rfind(_CONTENT_TYPE_LINE)
        if start < 0:
            return self.message.header(CONTENT_TYPE)  # absent, or spelt in another case
        start += _CONTENT_TYPE_SKIP
        value = raw[start : raw.find(b"\r\n", start)]
        text = _content_types.get(value)
        if text is None:
            text = value.strip().decode("utf-8", "replace")
            if len(_content_types) < _CONTENT_TYPES_KEPT:
                _content_types[value] = text
        return text

    @property
    def reply_to(self) -> str | None:
        """The subject a request expects its reply on, or ``None`` for a plain publish."""
        return self._reply or None

    # Core NATS has nothing to tell the server: acking only records the outcome.
    acks_locally = True

    async def ack(self) -> None:
        if self._state == 0:
            self._state = 1

    async def nack(self, *, delay: float | None = None) -> None:
        if self._state == 0:
            self._state = 2

    async def respond(self, message: Message) -> None:
        """Send ``message`` as the reply to this request (see :meth:`NatsBroker.request`)."""
        reply = self._reply
        if not reply:
            raise PublishError(
                f"the message on {self.topic!r} is not a request: it has no reply subject"
            )
        try:
            await self._nc.publish(reply, message.body, headers=message.headers or None)
        except (nats.errors.ConnectionClosedError, nats.errors.ConnectionDrainingError) as exc:
            raise NotConnected(f"cannot reply on {self.topic!r}: the connection is closed") from exc


class _JetStreamDelivery(NatsDelivery):
    """A JetStream delivery: ack and nack go to the server, which redelivers what is nacked."""

    __slots__ = ("_settings",)

    def __init__(
        self,
        topic: str,
        body: bytes,
        headers: Headers,
        queue: str | None,
        reply: str,
        nc: NATS,
        settings: NatsOptions,
    ) -> None:
        NatsDelivery.__init__(self, topic, body, headers, queue, reply, nc, _num_delivered(reply))
        self._settings = settings

    @property
    def reply_to(self) -> str | None:
        return None  # the reply subject of a JetStream message is its ack subject

    # JetStream settles with the server: Delivery's own ack/nack, which call the settle hooks.
    acks_locally = False
    ack = Delivery.ack
    nack = Delivery.nack

    async def _settle_ack(self) -> None:
        try:
            await self._nc.publish(self._reply, b"")
        except nats.errors.Error as exc:
            # The server delivers it again after ack_wait: a duplicate, never a loss.
            logger.warning(
                "could not ack a message on %r (%s): it will be redelivered", self.topic, exc
            )

    async def _settle_nack(self, delay: float | None) -> None:
        settings = self._settings
        max_deliver = settings.max_deliver
        try:
            if max_deliver > 0 and self.attempt >= max_deliver:
                await self._nc.publish(self._reply, b"+TERM")
                report_error(
                    PublishError(
                        f"message on {self.topic!r} given up after {self.attempt} deliveries "
                        f"(max_deliver={max_deliver})"
                    ),
                    self,
                )
                return
            if delay is None:
                delay = min(
                    settings.redelivery_delay * 2.0 ** (self.attempt - 1),
                    settings.max_redelivery_delay,
                )
            payload = b"-NAK"
            if delay > 0:
                payload += b' {"delay": %d}' % int(delay * 1e9)
            await self._nc.publish(self._reply, payload)
        except nats.errors.Error as exc:
            logger.warning(
                "could not nack a message on %r (%s): redelivered after ack_wait", self.topic, exc
            )


def _num_delivered(reply: str) -> int:
    """The delivery count in a JetStream ack subject (both the old and the domain form)."""
    tokens = reply.split(".")
    try:
        return int(tokens[4] if len(tokens) == 9 else tokens[6])
    except (IndexError, ValueError):
        return 1


OnMessage = Callable[[str, str, bytes, Headers], Awaitable[None]]


class NatsSubscriber(Subscriber):
    """A subscription on NATS: a core subscription, or one bound to a JetStream consumer."""

    def __init__(
        self,
        broker: NatsBroker,
        topic: str,
        queue: str | None,
        auto_ack: bool,
        *,
        stream: str | None = None,
        consumer: str | None = None,
        delete_consumer: bool = False,
    ) -> None:
        super().__init__(topic, queue, auto_ack)
        self._broker = broker
        self._sub: Subscription | None = None
        self._sink: Sink | None = None
        self._closed = False
        #: The JetStream stream and consumer this subscription reads, in JetStream mode.
        self.stream = stream
        self.consumer = consumer
        self._delete_consumer = delete_consumer

    async def _start(self, nc: NATS, subject: str, on_message: OnMessage) -> None:
        queue = self.queue or ""
        try:
            if isinstance(nc, FastClient):
                self._sink = Sink(on_message, f"microbroker-nats-{self.topic}")
                self._sub = await nc.subscribe_sink(subject, queue, self._sink)
            else:

                async def callback(msg: Msg) -> None:
                    await on_message(msg.subject, msg.reply, msg.data, msg.headers)

                self._sub = await nc.subscribe(subject, queue=queue, cb=callback)
            if nc.is_connected:
                # Return only once the server has the subscription, so that a
                # message published right after (from any connection) reaches it.
                await round_trip(nc, self._broker.settings.connect_timeout)
        except (nats.errors.TimeoutError, nats.errors.ConnectionReconnectingError) as exc:
            # The subscription stays in the client's table: nats-py sends it again
            # when it reconnects, so it is made, only not confirmed yet.
            logger.debug("nats: subscription to %r not confirmed yet: %r", subject, exc)
        except BaseException as exc:
            if self._sink is not None:
                await self._sink.close()
            if isinstance(exc, nats.errors.BadSubjectError):
                raise InvalidTopic(
                    f"{subject!r} (queue {self.queue!r}) is not a valid NATS subject and queue"
                ) from exc
            if isinstance(exc, nats.errors.Error):
                raise NotConnected(f"cannot subscribe to {subject!r}: {exc}") from exc
            raise

    @property
    def active(self) -> bool:
        return not self._closed and self._broker.connected

    async def unsubscribe(self) -> None:
        """Stop the subscription after handling what the server already sent to it.

        A queue group's JetStream consumer is durable and stays on the server for
        the group's next member; a broadcast subscription's consumer is deleted.
        """
        if self._closed:
            return
        self._closed = True
        self._broker._subs.discard(self)
        sub, sink = self._sub, self._sink
        if sub is not None:
            in_handler = sink is not None and asyncio.current_task() is sink.task
            await _drain(sub, in_handler)
            if sink is not None:
                if not in_handler:
                    await sink.join()
                conn = sub._conn
                if isinstance(conn, FastClient):
                    conn.release_sink(sub)
                await sink.close()
        js = self._broker._js
        if self._delete_consumer and js is not None and self.stream and self.consumer:
            try:
                await js.delete_consumer(self.stream, self.consumer)
            except Exception as exc:  # the server removes it by itself after inactive_threshold
                logger.info("could not delete consumer %s: %s", self.consumer, exc)


async def _drain(sub: Subscription, in_handler: bool) -> None:
    """Unsubscribe once the server has sent everything it had for ``sub``."""
    conn = sub._conn
    if sub._closed or conn.is_closed or conn.is_draining:
        return
    try:
        # Draining from inside the subscription's own handler would wait for that handler.
        if in_handler or conn.is_reconnecting or asyncio.current_task() is sub._wait_for_msgs_task:
            await sub.unsubscribe()
        else:
            await sub.drain()  # type: ignore[no-untyped-call]
    except nats.errors.Error as exc:
        logger.debug("unsubscribing from %s: %s", sub.subject, exc)
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()


class NatsBroker(Broker):
    """A broker on NATS (``MICRO_BROKER=nats``), built on nats-py.

    ``address`` is a comma-separated list of servers (``nats://host:4222``; the
    scheme may be left out, ``tls://`` asks for TLS). Options are documented on
    :class:`~microbroker_nats.options.NatsOptions` and in the README; any of them
    can also come from ``MICRO_NATS_<OPTION>``.

    Core NATS (the default) delivers at most once: fast, with queue groups,
    wildcards and automatic reconnection, but no acknowledgement. With
    ``jetstream=True`` messages are stored in a stream and delivered at least
    once through consumers: acked, redelivered on nack, kept across restarts.
    """

    name = "nats"
    default_address = DEFAULT_ADDRESS

    def __init__(self, address: str | None = None, **options: Any) -> None:
        settings = NatsOptions.from_arguments(options)
        super().__init__(address, **options)
        self.settings = settings
        self.servers = parse_servers(self._address)
        self._nc: NATS | None = None
        self._js: JetStreamContext | None = None
        self._closing = False
        self._subs: set[NatsSubscriber] = set()
        self._max_payload = settings.max_payload
        self._set_capabilities()
        # JetStream: the stream that captures each topic used so far.
        self._stream_of: dict[str, str] = {}
        self._stream_lock = asyncio.Lock()
        self._publishing = 0
        self._published: asyncio.Event | None = None

    def _set_capabilities(self) -> None:
        if self.settings.jetstream:
            self.capabilities = _jetstream_capabilities(self._max_payload, self.settings.storage)
        else:
            self.capabilities = _core_capabilities(self._max_payload)

    @property
    def connected(self) -> bool:
        nc = self._nc
        return nc is not None and not self._closing and not nc.is_closed

    @property
    def client(self) -> NATS:
        """The underlying nats-py client, for what this broker does not expose."""
        if self._nc is None:
            raise NotConnected("the nats broker is not connected: call connect() first")
        return self._nc

    # Connecting ---------------------------------------------------------------------

    async def connect(self) -> None:
        if self._nc is not None:
            return
        settings = self.settings
        failures: list[BaseException] = []
        connecting = True

        async def on_error(exc: Exception) -> None:
            if connecting:
                failures.append(exc)
            else:
                logger.warning("nats: %s", exc or type(exc).__name__)

        async def on_disconnected() -> None:
            # While connecting, a failure is connect()'s error, not a lost connection.
            if not self._closing and not connecting:
                logger.warning("nats: disconnected from %s, reconnecting", self.servers)

        async def on_reconnected() -> None:
            url = nc.connected_url
            logger.warning("nats: reconnected to %s", url.netloc if url else "?")

        # Settings that cannot work (a TLS or credentials file) raise here, as themselves.
        connect_kwargs = settings.connect_kwargs()
        nc = client_class(settings.fast_path)()
        try:
            await nc.connect(
                servers=self.servers,
                error_cb=on_error,
                disconnected_cb=on_disconnected,
                reconnected_cb=on_reconnected,
                allow_reconnect=True,
                # nats-py counts attempts beyond the first, and treats 0 as "forever".
                max_reconnect_attempts=max(1, settings.connect_attempts - 1),
                **connect_kwargs,
            )
        except Exception as exc:
            with contextlib.suppress(Exception):
                await nc.close()
            raise self._connect_error(exc, failures) from exc
        connecting = False
        # Connected: from now on a lost connection is retried as configured.
        nc.options["max_reconnect_attempts"] = settings.max_reconnect_attempts
        self._max_payload = nc.max_payload
        self._set_capabilities()
        self._nc = nc
        if settings.jetstream:
            try:
                self._js = nc.jetstream(timeout=settings.publish_timeout)
                await self._setup_stream()
            except BaseException:
                self._nc = self._js = None
                with contextlib.suppress(Exception):
                    await nc.close()
                raise

    def _connect_error(self, exc: BaseException, failures: list[BaseException]) -> Exception:
        causes = [*failures, exc]
        where = ", ".join(self.servers)
        for cause in causes:
            text = str(cause).lower()
            if isinstance(cause, nats.errors.AuthorizationError) or "authorization" in text:
                return NatsAuthError(
                    f"the NATS server at {where} refused the credentials (Authorization "
                    "Violation): give the token=, user= and password=, nkey_seed= or "
                    "credentials= it expects (or MICRO_NATS_TOKEN...)"
                )
        tls_error = self._tls_error(causes, where)
        if tls_error is not None:
            return tls_error
        # "no servers available" only says that every attempt failed: say why they did.
        telling = [c for c in causes if not isinstance(c, nats.errors.NoServersError)] or causes
        detail = next(
            (f"{type(c).__name__}: {c}" for c in reversed(telling) if str(c)),
            type(telling[-1]).__name__,
        )
        hint = ""
        if any(isinstance(c, (TimeoutError, asyncio.TimeoutError)) for c in causes):
            hint = (
                "; it did not answer within connect_timeout (a server whose tls block sets "
                "handshake_first answers only a client with tls_handshake_first=True)"
            )
        elif self._tls_wanted() and any(isinstance(c, ConnectionError) for c in causes):
            hint = f"; it closed the TLS connection: {_CLIENT_CERT_HINT}"
        return NatsConnectError(
            f"cannot connect to NATS at {where} ({detail}): check MICRO_BROKER_ADDRESS "
            "(a comma-separated list of nats://host:port) and that nats-server is running" + hint
        )

    @staticmethod
    def _tls_error(causes: list[BaseException], where: str) -> NatsConnectError | None:
        """The error for a failed TLS set-up among ``causes``, saying what to do; or ``None``."""
        for cause in causes:
            if isinstance(cause, nats.errors.SecureConnWantedError):
                return NatsConnectError(
                    f"the NATS server at {where} does not offer TLS, and this broker was "
                    "asked for TLS (tls=, tls_ca_file=, tls_cert_file= or a tls:// address): "
                    "nothing was sent to it; enable TLS on the server, or drop the TLS options"
                )
        for cause in causes:
            if isinstance(cause, ssl.SSLCertVerificationError):
                return NatsConnectError(
                    f"the NATS server at {where} presented a TLS certificate this broker does "
                    f"not trust ({cause.verify_message}): give tls_ca_file= the CA that issued "
                    "it (or tls= an ssl.SSLContext that trusts it), and tls_hostname= the name "
                    "in the certificate if it is not the address's host"
                )
        for cause in causes:
            if isinstance(cause, ssl.SSLError):
                reason = cause.reason or str(cause)
                return NatsConnectError(
                    f"the TLS handshake with the NATS server at {where} failed ({reason}): "
                    f"{_CLIENT_CERT_HINT}; and tls_handshake_first=True needs a server whose "
                    "tls block sets handshake_first"
                )
        return None

    def _tls_wanted(self) -> bool:
        settings = self.settings
        return bool(
            settings.tls is not None
            or settings.tls_ca_file
            or settings.tls_cert_file
            or settings.tls_handshake_first
            or any(server.startswith("tls://") for server in self.servers)
        )

    async def disconnect(self) -> None:
        nc = self._nc
        if nc is None or self._closing:
            return
        self._closing = True
        try:
            if self._publishing:
                # JetStream publishes waiting for their acknowledgement finish first.
                self._published = asyncio.Event()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._published.wait(), self.settings.publish_timeout + 1
                    )
            subs = list(self._subs)
            await asyncio.gather(*(sub.unsubscribe() for sub in subs), return_exceptions=True)
            try:
                await nc.drain()
            except nats.errors.Error:  # reconnecting or already closed: nothing left to drain
                await nc.close()
        finally:
            self._nc = self._js = None
            self._subs.clear()
            self._stream_of.clear()
            self._closing = False

    # Publishing ---------------------------------------------------------------------

    async def publish(self, topic: str, message: Message, **options: Any) -> None:
        """Publish ``message`` on ``topic``.

        Core NATS hands the message to the connection (buffered while
        reconnecting, up to ``pending_size``). JetStream returns once the server
        has stored it; options ``msg_id`` (deduplication id, default the
        ``Micro-Id`` header) and ``timeout`` apply there.
        """
        nc = self._nc
        if nc is None or self._closing:
            raise NotConnected(
                "the nats broker is not connected: call connect() or use 'async with broker'"
            )
        if type(topic) is not str or not topic:
            check_topic(topic)
        if "*" in topic or ">" in topic:
            _check_literal(topic)
        if type(message) is not Message and not isinstance(message, Message):
            raise TypeError(
                f"publish() takes a microbroker.Message, not {type(message).__name__}: "
                "wrap the body as Message(body=..., headers={...})"
            )
        body = message.body
        headers = message.headers or None
        if len(body) > self._max_payload - _HEADER_SLACK:
            self._check_size(topic, body, headers)
        if self._js is not None:
            await self._publish_jetstream(topic, message, body, headers, options)
            return
        if options:
            raise TypeError(f"nats publish() takes no option(s) {', '.join(options)} in core mode")
        try:
            if type(nc) is FastClient:
                state = nc.write_publish(topic, body, headers)
                if state == WRITE_DONE:
                    return
                if state != WRITE_FALLBACK:
                    await nc.kick(state == WRITE_FORCE)
                    return
            await nc.publish(topic, body, headers=headers)
        except nats.errors.Error as exc:
            raise self._publish_error(topic, exc) from exc

    def _check_size(self, topic: str, body: bytes, headers: dict[str, str] | None) -> None:
        size = len(body)
        if headers:
            size += 12 + sum(len(k) + len(v.encode()) + 4 for k, v in headers.items())
        if size > self._max_payload:
            raise PublishError(
                f"the message on {topic!r} is {size} bytes with its headers, more than the "
                f"server's max_payload of {self._max_payload} bytes: send a smaller body "
                "(or raise max_payload in the nats-server configuration)"
            )

    def _publish_error(self, topic: str, exc: Exception) -> Exception:
        if isinstance(exc, nats.errors.ConnectionClosedError | nats.errors.ConnectionDrainingError):
            return NotConnected(f"cannot publish on {topic!r}: the nats connection is closed")
        if isinstance(exc, nats.errors.BadSubjectError):
            return InvalidTopic(f"{topic!r} is not a valid NATS subject")
        if isinstance(exc, nats.errors.OutboundBufferLimitError):
            return PublishError(
                f"cannot publish on {topic!r}: the connection is down and its reconnect "
                f"buffer ({self.settings.pending_size} bytes, option pending_size) is full"
            )
        if isinstance(exc, nats.errors.BadHeaderError):
            return PublishError(f"cannot publish on {topic!r}: {exc}")
        if isinstance(exc, nats.errors.MaxPayloadError):
            return PublishError(
                f"the message on {topic!r} is larger than the server's max_payload "
                f"({self._max_payload} bytes)"
            )
        return PublishError(f"cannot publish on {topic!r}: {exc}")

    async def _publish_jetstream(
        self,
        topic: str,
        message: Message,
        body: bytes,
        headers: dict[str, str] | None,
        options: dict[str, Any],
    ) -> None:
        js = self._js
        assert js is not None
        msg_id = options.pop("msg_id", None) or message.header("Micro-Id")
        timeout = options.pop("timeout", None) or self.settings.publish_timeout
        if options:
            raise TypeError(
                f"nats publish() takes no option(s) {', '.join(options)}; "
                "in JetStream mode it takes msg_id and timeout"
            )
        send = dict(headers) if headers else {}
        if msg_id:
            # The server stores a message with a known id only once within duplicate_window,
            # so that publishing again after a timeout cannot make a duplicate.
            send["Nats-Msg-Id"] = msg_id
        self._publishing += 1
        try:
            if topic not in self._stream_of:
                try:
                    await self._stream_for(topic)
                except StreamError as exc:
                    raise PublishError(str(exc)) from exc
            for attempt in (1, 2):
                try:
                    await js.publish(topic, body, timeout=timeout, headers=send or None)
                    return
                except nats.js.errors.NoStreamResponseError as exc:
                    # Another broker may have rewritten the stream's subjects meanwhile.
                    self._stream_of.pop(topic, None)
                    if attempt == 2 or self.settings.subjects is not None:
                        raise PublishError(
                            f"no JetStream stream captures {topic!r}: add it to the subjects of "
                            f"stream {self.settings.stream!r} (option subjects)"
                        ) from exc
                    try:
                        await self._stream_for(topic)
                    except StreamError as again:
                        raise PublishError(str(again)) from again
                except nats.errors.TimeoutError as exc:
                    raise PublishError(
                        f"JetStream did not acknowledge the message on {topic!r} within "
                        f"{timeout}s; it may or may not be stored: publish it again (with the "
                        "same Micro-Id it is stored once)"
                    ) from exc
                except nats.js.errors.APIError as exc:
                    raise PublishError(
                        f"JetStream refused the message on {topic!r}: {exc.description or exc}"
                    ) from exc
                except nats.errors.Error as exc:
                    raise self._publish_error(topic, exc) from exc
        finally:
            self._publishing -= 1
            if not self._publishing and self._published is not None:
                self._published.set()

    # Subscribing --------------------------------------------------------------------

    async def subscribe(
        self,
        topic: str,
        handler: Handler,
        *,
        queue: str | None = None,
        auto_ack: bool = True,
        **options: Any,
    ) -> Subscriber:
        """Call ``handler`` for each message on ``topic`` (NATS wildcards allowed).

        In JetStream mode a ``queue`` subscription reads a durable consumer
        shared by the group (see the README for its name; option ``durable``
        sets it), and a broadcast subscription reads a consumer of its own.
        """
        nc = self._nc
        if nc is None or self._closing:
            raise NotConnected(
                "the nats broker is not connected: call connect() or use 'async with broker'"
            )
        check_topic(topic)
        _check_pattern(topic)
        durable = options.pop("durable", None)
        if options:
            raise TypeError(f"nats subscribe() takes no option(s) {', '.join(options)}")
        if self._js is not None:
            return await self._subscribe_jetstream(topic, handler, queue, auto_ack, durable)
        sub = NatsSubscriber(self, topic, queue, auto_ack)
        settled = dispatcher(handler, auto_ack)

        def on_message(subject: str, reply: str, data: bytes, headers: Headers) -> Awaitable[None]:
            # Not a coroutine of its own: the sink awaits the dispatcher's directly.
            return settled(NatsDelivery(subject, data, headers, queue, reply, nc))

        await sub._start(nc, topic, on_message)
        self._subs.add(sub)
        return sub

    async def serve(
        self, topic: str, responder: Responder, *, queue: str | None = None
    ) -> Subscriber:
        """Answer requests on ``topic`` (NATS request/reply, also in JetStream mode).

        ``responder(delivery)`` returns the reply :class:`~microbroker.Message`
        (or ``None`` to send none, having answered with ``delivery.respond``).
        When it raises, the error goes to the ``on_error`` hooks and the
        requester gets an empty reply with the header ``Micro-Error``, so that it
        does not wait for its timeout. Servers sharing a ``queue`` answer each
        request once between them.
        """
        nc = self._nc
        if nc is None or self._closing:
            raise NotConnected("the nats broker is not connected: call connect() first")
        check_topic(topic)
        _check_pattern(topic)
        sub = NatsSubscriber(self, topic, queue, True)

        async def on_request(subject: str, reply: str, data: bytes, headers: Headers) -> None:
            delivery = NatsDelivery(subject, data, headers, queue, reply, nc)
            try:
                answer = await responder(delivery)
            except Exception as exc:
                report_error(exc, delivery)
                if reply:
                    error = f"{type(exc).__name__}: {exc}".replace("\r", " ").replace("\n", " ")
                    with contextlib.suppress(Exception):
                        await delivery.respond(Message(b"", {"Micro-Error": error}))
                return
            if answer is not None and reply:
                await delivery.respond(answer)

        await sub._start(nc, topic, on_request)
        self._subs.add(sub)
        return sub

    async def request(self, topic: str, message: Message, *, timeout: float = 5.0) -> Message:
        """Send ``message`` as a request on ``topic`` and return the reply.

        Uses NATS's native request/reply (core NATS, also in JetStream mode).
        Raises :class:`~microbroker_nats.NoResponders` at once when nobody
        serves the topic, and :class:`~microbroker_nats.RequestTimeout` after
        ``timeout`` seconds without a reply. A reply with the header
        ``Micro-Error`` reports a failure of the serving side.
        """
        nc = self._nc
        if nc is None or self._closing:
            raise NotConnected("the nats broker is not connected: call connect() first")
        check_topic(topic)
        _check_literal(topic)
        body = message.body
        headers = message.headers or None
        if len(body) > self._max_payload - _HEADER_SLACK:
            self._check_size(topic, body, headers)
        try:
            reply = await nc.request(topic, body, timeout=timeout, headers=headers)
        except nats.errors.NoRespondersError as exc:
            raise NoResponders(f"nobody serves requests on {topic!r}") from exc
        except nats.errors.TimeoutError as exc:
            raise RequestTimeout(f"no reply on {topic!r} within {timeout}s") from exc
        except nats.errors.Error as exc:
            raise self._publish_error(topic, exc) from exc
        return Message(reply.data, reply.headers or {})

    # JetStream ----------------------------------------------------------------------

    async def _setup_stream(self) -> None:
        """Create the configured stream, or bind to it and add the configured subjects."""
        js = self._js
        assert js is not None
        settings = self.settings
        name = settings.stream
        try:
            info = await js.stream_info(name)
        except nats.js.errors.NotFoundError:
            info = None
        except (nats.errors.NoRespondersError, nats.js.errors.ServiceUnavailableError) as exc:
            raise StreamError(
                f"JetStream is not enabled on the NATS server at {', '.join(self.servers)}: "
                "start nats-server with -js (or use the broker without jetstream=True)"
            ) from exc
        except nats.errors.TimeoutError as exc:
            raise StreamError(
                "JetStream did not answer: is it enabled on the server (nats-server -js)?"
            ) from exc
        wanted = list(settings.subjects or [])
        try:
            if info is None:
                config = api.StreamConfig(
                    name=name,
                    subjects=wanted or [self._placeholder_subject],
                    storage=api.StorageType.FILE
                    if settings.storage == "file"
                    else api.StorageType.MEMORY,
                    num_replicas=settings.replicas,
                    max_age=settings.max_age,
                    duplicate_window=settings.duplicate_window,
                )
                await js.add_stream(config)
            else:
                present = list(info.config.subjects or [])
                missing = [s for s in wanted if not any(_covers(p, s) for p in present)]
                if missing:
                    info.config.subjects = [*present, *missing]
                    await js.update_stream(info.config)
        except nats.js.errors.APIError as exc:
            raise StreamError(
                f"cannot create or update stream {name!r}: {exc.description or exc}"
            ) from exc

    @property
    def _placeholder_subject(self) -> str:
        # A stream needs a subject; this one captures nothing a user publishes.
        return f"_microbroker.{self.settings.stream}"

    async def _stream_for(self, topic: str) -> str:
        """The stream that captures ``topic``, adding it to ours when subjects are automatic."""
        known = self._stream_of.get(topic)
        if known is not None:
            return known
        try:
            return await self._find_or_add_subject(topic)
        except nats.js.errors.APIError as exc:
            raise StreamError(f"JetStream refused a request about {topic!r}: {exc}") from exc
        except nats.errors.TimeoutError as exc:
            raise StreamError(
                f"JetStream did not answer in time while looking up the stream of {topic!r}"
            ) from exc
        except nats.errors.Error as exc:
            if self._closing or self._nc is None or self._nc.is_closed:
                raise NotConnected(f"the nats connection closed while using {topic!r}") from exc
            raise StreamError(f"cannot look up the stream of {topic!r}: {exc}") from exc

    async def _find_or_add_subject(self, topic: str) -> str:
        js = self._js
        assert js is not None
        name = self.settings.stream
        async with self._stream_lock:
            for _ in range(5):
                known = self._stream_of.get(topic)
                if known is not None:
                    return known
                try:
                    info = await js.stream_info(name)
                except nats.js.errors.NotFoundError as exc:
                    raise StreamError(
                        f"stream {name!r} is gone from the server: reconnect the broker to "
                        "create it again"
                    ) from exc
                subjects = list(info.config.subjects or [])
                if any(_covers(s, topic) for s in subjects):
                    self._stream_of[topic] = name
                    return name
                if not _is_pattern(topic):
                    try:
                        other = await js.find_stream_name_by_subject(topic)
                    except nats.js.errors.NotFoundError:
                        other = None
                    if other:
                        self._stream_of[topic] = other
                        return other
                if self.settings.subjects is not None:
                    raise StreamError(
                        f"no JetStream stream captures {topic!r}: add it to the subjects of "
                        f"stream {name!r} (option subjects) or create a stream for it"
                    )
                placeholder = self._placeholder_subject
                info.config.subjects = [
                    s for s in subjects if s != placeholder and not _covers(topic, s)
                ] + [topic]
                try:
                    await js.update_stream(info.config)
                except nats.js.errors.APIError as exc:
                    raise StreamError(
                        f"cannot add {topic!r} to stream {name!r}: {exc.description or exc}"
                    ) from exc
            raise StreamError(f"could not add {topic!r} to stream {name!r}: it kept changing")

    async def _subscribe_jetstream(
        self,
        topic: str,
        handler: Handler,
        queue: str | None,
        auto_ack: bool,
        durable: str | None,
    ) -> Subscriber:
        nc, js = self._nc, self._js
        assert nc is not None
        assert js is not None
        settings = self.settings
        stream = await self._stream_for(topic)
        if queue:
            consumer = durable or durable_name(queue, topic)
            config = await self._queue_consumer(js, stream, consumer, topic, queue)
        else:
            consumer = durable or f"microbroker_{uuid.uuid4().hex}"
            config = self._consumer_config(consumer, topic, nc.new_inbox(), None)
            if durable is None:
                config.inactive_threshold = settings.inactive_threshold
            await self._add_consumer(js, stream, config)
        sub = NatsSubscriber(
            self,
            topic,
            queue,
            auto_ack,
            stream=stream,
            consumer=consumer,
            delete_consumer=queue is None and durable is None,
        )
        settled = dispatcher(handler, auto_ack)

        async def on_message(subject: str, reply: str, data: bytes, headers: Headers) -> None:
            if not reply:  # a status message, not a stored one
                return
            await settled(_JetStreamDelivery(subject, data, headers, queue, reply, nc, settings))

        assert config.deliver_subject is not None
        await sub._start(nc, config.deliver_subject, on_message)
        self._subs.add(sub)
        return sub

    def _consumer_config(
        self, name: str, topic: str, deliver_subject: str, queue: str | None
    ) -> api.ConsumerConfig:
        settings = self.settings
        return api.ConsumerConfig(
            durable_name=name,
            deliver_subject=deliver_subject,
            deliver_group=queue,
            deliver_policy=api.DeliverPolicy.NEW
            if settings.deliver_policy == "new"
            else api.DeliverPolicy.ALL,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=settings.ack_wait,
            max_deliver=settings.max_deliver,
            max_ack_pending=settings.max_ack_pending,
            filter_subject=topic,
        )

    async def _queue_consumer(
        self, js: JetStreamContext, stream: str, name: str, topic: str, queue: str
    ) -> api.ConsumerConfig:
        """Bind to the group's durable consumer, creating it for the group's first member."""
        nc = self._nc
        assert nc is not None
        for _ in range(3):
            try:
                info = await js.consumer_info(stream, name)
            except nats.js.errors.NotFoundError:
                created = self._consumer_config(name, topic, nc.new_inbox(), queue)
                try:
                    await js.add_consumer(stream, created)
                    return created
                except nats.js.errors.APIError:
                    continue  # another member created it at the same moment: bind to theirs
            config: api.ConsumerConfig = info.config
            if config.filter_subject not in (None, topic) or config.deliver_group != queue:
                raise StreamError(
                    f"consumer {name!r} of stream {stream!r} exists for topic "
                    f"{config.filter_subject!r} and group {config.deliver_group!r}, not for "
                    f"{topic!r} and {queue!r}: choose another durable name"
                )
            return config
        raise StreamError(f"cannot create or bind consumer {name!r} on stream {stream!r}")

    async def _add_consumer(
        self, js: JetStreamContext, stream: str, config: api.ConsumerConfig
    ) -> None:
        try:
            await js.add_consumer(stream, config)
        except nats.js.errors.APIError as exc:
            raise StreamError(
                f"cannot create consumer {config.durable_name!r} on stream {stream!r}: "
                f"{exc.description or exc}"
            ) from exc


def durable_name(queue: str, topic: str) -> str:
    """The durable consumer of queue group ``queue`` on ``topic``.

    The group's name comes first, for whoever reads the server's consumer list;
    a digest of the topic follows, because a group name is commonly shared by
    several topics (a service's name) and each (group, topic) pair needs its own
    consumer.
    """
    digest = hashlib.blake2b(topic.encode(), digest_size=5).hexdigest()
    return f"{_UNSAFE_NAME.sub('_', queue)[:200]}_{digest}"


def _is_pattern(topic: str) -> bool:
    return "*" in topic or ">" in topic


def _check_pattern(topic: str) -> None:
    if not _is_pattern(topic) and " " not in topic:
        return
    if any(c in topic for c in " \t\r\n"):
        raise InvalidTopic(f"a NATS subject cannot contain whitespace: {topic!r}")
    levels = topic.split(".")
    for index, level in enumerate(levels):
        if level == ">" and index != len(levels) - 1:
            raise InvalidTopic(f"'>' must be the last level of a subject: {topic!r}")
        if level not in ("*", ">") and ("*" in level or ">" in level):
            raise InvalidTopic(f"a wildcard must be a whole level of the subject: {topic!r}")


def _check_literal(topic: str) -> None:
    for level in topic.split("."):
        if level in ("*", ">"):
            raise InvalidTopic(
                f"cannot publish to a wildcard subject {topic!r}: wildcards are for subscribe"
            )


def _covers(pattern: str, subject: str) -> bool:
    """Whether every subject matched by ``subject`` is matched by ``pattern``."""
    p_levels = pattern.split(".")
    s_levels = subject.split(".")
    for index, level in enumerate(p_levels):
        if level == ">":
            return len(s_levels) > index
        if index >= len(s_levels):
            return False
        other = s_levels[index]
        if other == ">":
            return False
        if level != "*" and level != other:
            return False
    return len(p_levels) == len(s_levels)


__all__ = [
    "WILDCARDS",
    "NatsBroker",
    "NatsDelivery",
    "NatsSubscriber",
    "Responder",
    "durable_name",
]
