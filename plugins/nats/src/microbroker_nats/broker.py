"""The NATS broker: core NATS (at most once) or JetStream (at least once), and request/reply.

The broker composes its parts, one module per role: ``_connection``
(connecting, and errors that say what to fix), ``_publishing`` (the write
path, JetStream's stored publish, requests), ``_subscribing`` (subscriptions
and their mailboxes, request serving), ``_delivery`` (how a delivery is
settled), ``_jetstream`` (streams and consumers) and ``_client`` (nats-py's
client with a lean message path).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS

from microbroker import Capabilities, Message, NotConnected, Subscriber
from microbroker.transport import Broker, Handler, check_topic

from . import _connection
from ._client import WRITE_DONE, WRITE_FALLBACK, WRITE_FORCE, FastClient, round_trip
from ._delivery import JetStreamDelivery, NatsDelivery
from ._jetstream import Streams, durable_name
from ._publishing import MAX_HEADERS, Publisher, declared_header_bytes, declared_size
from ._subjects import WILDCARDS, check_pattern
from ._subscribing import NatsSubscriber, Responder, serve, subscribe_core, subscribe_jetstream
from .errors import StreamError
from .options import DEFAULT_ADDRESS, NatsOptions, parse_servers


def capabilities(settings: NatsOptions, max_payload: int) -> Capabilities:
    """What a broker with ``settings`` promises, on a server with ``max_payload``."""
    jetstream = settings.jetstream
    header_bytes = declared_header_bytes(
        jetstream=jetstream, envelope=settings.uses_envelope, max_headers=MAX_HEADERS
    )
    return Capabilities(
        queue_groups=True,
        ack=jetstream,
        at_least_once=jetstream,
        persistence=jetstream and settings.storage == "file",
        ordering=True,
        reconnect=True,
        wildcards=WILDCARDS,
        max_message_size=declared_size(
            max_payload, jetstream=jetstream, envelope=settings.uses_envelope
        ),
        max_headers=MAX_HEADERS,
        **({} if header_bytes is None else {"max_header_bytes": header_bytes}),
    )


class NatsBroker(Broker):
    """A broker on NATS (``MICRO_BROKER=nats``), built on nats-py.

    ``address`` is a comma-separated list of servers (``nats://host:4222``; the
    scheme may be left out, ``tls://`` asks for TLS). Options are documented on
    :class:`~microbroker_nats.options.NatsOptions` and in the README; any of them
    can also come from ``MICRO_NATS_<OPTION>``.

    Core NATS (the default) delivers at most once: fast, with queue groups,
    wildcards and automatic reconnection, but no acknowledgement. With
    ``jetstream=True`` messages are stored in a stream and delivered at least
    once through consumers: acked, redelivered on nack, given up (``+TERM``)
    by the subscription's retry policy, kept across restarts.
    ``capabilities.max_message_size`` follows the server's ``max_payload``
    (assumed from the option before connecting, read from the server after).
    """

    name = "nats"
    default_address = DEFAULT_ADDRESS

    def __init__(self, address: str | None = None, **options: Any) -> None:
        settings = NatsOptions.from_arguments(options)
        super().__init__(address, **options)
        self.settings = settings
        self.servers = parse_servers(self._address)
        self.capabilities = capabilities(settings, settings.max_payload)
        self._nc: NATS | None = None
        self._publisher: Publisher | None = None
        self._streams: Streams | None = None
        self._closing = False
        # Connected and not closing: read on every publish, so kept as one flag.
        self._open = False
        # The connection and its Publisher while publishes can take the lean path.
        self._lean: tuple[FastClient, Publisher] | None = None
        self._subs: set[NatsSubscriber] = set()

    @property
    def connected(self) -> bool:
        return self._open

    def _closed(self) -> None:
        """The connection closed for good (nats-py gave up reconnecting, or disconnect)."""
        self._open = False
        self._lean = None

    def _lost(self) -> None:
        """The connection dropped: JetStream publishes waiting for an ack send again."""
        if self._publisher is not None:
            self._publisher.connection_lost()

    @property
    def pending_acks(self) -> int:
        """JetStream publishes sent and not yet acknowledged (nor given up on); 0 in core NATS.

        With ``publish_acks="async"`` at most ``max_pending_acks``.
        """
        publisher = self._publisher
        return publisher.in_flight if publisher is not None else 0

    @property
    def client(self) -> NATS:
        """The underlying nats-py client, for what this broker does not expose."""
        if self._nc is None:
            raise NotConnected("the nats broker is not connected: call connect() first")
        return self._nc

    # Connecting ---------------------------------------------------------------------

    async def connect(self) -> None:
        if self._nc is not None:
            if self._open:
                return
            # nats-py gave up reconnecting: start again with a new connection.
            await self.disconnect()
        settings = self.settings
        nc = await _connection.open_connection(
            settings, self.servers, lambda: self._closing, self._closed, self._lost
        )
        streams = None
        publisher = Publisher(nc, settings, None)
        if settings.jetstream:
            try:
                streams = Streams(nc, settings, self.servers)
                await streams.setup()
                publisher = Publisher(nc, settings, streams)
                await publisher.start()
            except BaseException:
                with contextlib.suppress(Exception):
                    await nc.close()
                raise
        self.capabilities = capabilities(settings, nc.max_payload)
        self._streams = streams
        self._publisher = publisher
        self._nc = nc
        if type(nc) is FastClient and publisher.lean:
            self._lean = (nc, publisher)
        self._open = not nc.is_closed

    async def disconnect(self) -> None:
        nc = self._nc
        if nc is None or self._closing:
            return
        self._closing = True
        self._open = False
        self._lean = None
        try:
            publisher = self._publisher
            if publisher is not None:
                # JetStream publishes waiting for their acknowledgement finish first.
                await publisher.wait_idle(self.settings.publish_timeout + 1)
                publisher.close()
                if publisher.failed:
                    self.logger.warning(
                        "nats: %d publish(es) made with publish_acks='async' were not "
                        "acknowledged by JetStream (each reported to on_error); flush() "
                        "before disconnect() raises them",
                        publisher.failed,
                    )
            subs = list(self._subs)
            await asyncio.gather(*(sub.unsubscribe() for sub in subs), return_exceptions=True)
            await _connection.close(nc)
        finally:
            self._nc = None
            self._publisher = None
            self._streams = None
            self._subs.clear()
            self._closing = False

    # Publishing ---------------------------------------------------------------------

    async def send(self, topic: str, message: Message, **options: Any) -> None:
        """Publish ``message`` on ``topic`` (``Broker.publish`` checked it first).

        Core NATS hands the message to the connection (buffered while
        reconnecting, up to ``pending_size``). JetStream returns once the
        server has stored it, or with ``publish_acks="async"`` once it is
        written (see :meth:`flush`); options ``msg_id`` (the deduplication id,
        by default the ``Micro-ID`` header, read in any case) and ``timeout``
        apply there.
        """
        lean = self._lean
        if lean is not None and not options and "*" not in topic and ">" not in topic:
            # The hot path, here rather than one call further (Publisher.send has the same).
            nc = lean[0]
            body = message.body
            headers = message.headers or None
            try:
                state = nc.write_publish(topic, body, headers)
                if state == WRITE_DONE:
                    return
                if state != WRITE_FALLBACK:
                    await nc.kick(state == WRITE_FORCE)
                    return
                await nc.publish(topic, body, headers=headers)
            except nats.errors.Error as exc:
                raise lean[1].error(topic, message, exc) from exc
            return
        publisher = self._publisher
        if publisher is None or self._closing:
            raise NotConnected("the nats broker is not connected")
        if publisher.async_acks:
            await publisher.send_async(topic, message, options)
            return
        await publisher.send(topic, message, options)

    async def flush(self) -> None:
        """Wait until the server has every message published so far.

        In JetStream mode: until no publish awaits its acknowledgement. With
        ``publish_acks="async"`` it then raises
        :class:`~microbroker_nats.UnackedPublishes` if any publish since the
        last flush was not acknowledged (each one was reported to the
        ``on_error`` hooks too, when the broker gave up on it, at most
        ``publish_timeout`` after it was published). In core NATS: until the
        server has processed everything written (a PING/PONG round trip).
        """
        nc = self._nc
        publisher = self._publisher
        if nc is None or publisher is None or self._closing:
            raise NotConnected("the nats broker is not connected: call connect() first")
        if publisher.streams is None:
            try:
                await round_trip(nc, self.settings.publish_timeout)
            except nats.errors.Error as exc:
                raise NotConnected(f"cannot flush the nats connection: {exc}") from exc
            return
        await publisher.flush()

    async def request(self, topic: str, message: Message, *, timeout: float = 5.0) -> Message:
        """Send ``message`` as a request on ``topic`` and return the reply.

        Uses NATS's native request/reply (core NATS, also in JetStream mode,
        with NATS headers also with the envelope option). Raises
        :class:`~microbroker_nats.NoResponders` at once when nobody serves the
        topic, and :class:`~microbroker_nats.RequestTimeout` after ``timeout``
        seconds without a reply. A reply with the header ``Micro-Error``
        reports a failure of the serving side. The message is checked as
        :meth:`publish` checks it.
        """
        publisher = self._publisher
        if publisher is None or self._closing:
            raise NotConnected("the nats broker is not connected: call connect() first")
        return await publisher.request(topic, message, timeout)

    # Subscribing --------------------------------------------------------------------

    async def receive(
        self,
        topic: str,
        deliver: Handler,
        *,
        queue: str | None,
        auto_ack: bool,
        **options: Any,
    ) -> Subscriber:
        """Deliver each message on ``topic`` (NATS wildcards allowed) to ``deliver``.

        In JetStream mode a ``queue`` subscription reads a durable consumer
        shared by the group (see the README for its name; option ``durable``
        sets it), and a broadcast subscription reads a consumer of its own.
        """
        nc = self._nc
        if nc is None or self._closing:
            raise NotConnected("the nats broker is not connected")
        check_pattern(topic)
        durable = options.pop("durable", None)
        if options:
            raise TypeError(f"nats subscribe() takes no option(s) {', '.join(options)}")
        if self._streams is None:
            sub = await subscribe_core(self, nc, topic, deliver, queue, auto_ack)
        else:
            try:
                sub = await subscribe_jetstream(self, nc, topic, deliver, queue, auto_ack, durable)
            except nats.js.errors.APIError as exc:
                raise StreamError(
                    f"JetStream refused the consumer of {topic!r}: {exc.description or exc}"
                ) from exc
            except nats.errors.Error as exc:
                raise NotConnected(f"cannot subscribe to {topic!r}: {exc}") from exc
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
        check_pattern(topic)
        sub = await serve(self, nc, topic, responder, queue)
        self._subs.add(sub)
        return sub


__all__ = [
    "WILDCARDS",
    "JetStreamDelivery",
    "NatsBroker",
    "NatsDelivery",
    "NatsSubscriber",
    "Responder",
    "capabilities",
    "durable_name",
]
