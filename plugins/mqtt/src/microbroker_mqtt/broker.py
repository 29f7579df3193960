"""The MQTT broker: MQTT 5 (or 3.1.1) on gmqtt, with persistent sessions and shared subscriptions.

How microbroker's model maps onto MQTT:

- a ``Message``'s headers travel as MQTT 5 user properties, the body as the
  payload; under MQTT 3.1.1 (or ``envelope=True``) both travel in go-micro's
  JSON envelope ``{"Header": {...}, "Body": "<base64>"}``, as go-micro's mqtt
  plugin sends them (``_envelope``);
- ``subscribe(topic, queue=Q)`` is the shared subscription ``$share/Q/<topic>``
  (``_subscribing``); ``+`` and ``#`` are the wildcards, ``/`` the separator;
- the session is persistent (clean start off), so the server keeps the
  subscriptions and queues QoS 1/2 messages while the client is away;
- a QoS 1/2 message is acknowledged to the server only once its handlers
  have settled it (``_delivery``), in the order the messages came: one that
  was received and not handled when the process died is sent again when the
  session resumes. A nack delivers it again here, after the retry policy's
  backoff, still unacknowledged; given up (dead-lettered) it is acknowledged.

See the README's "Delivery guarantees".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Coroutine
from typing import Any

from microbroker import InvalidTopic, Message, NotConnected
from microbroker.transport import Broker, Capabilities, Flow, Handler, Subscriber

from ._connection import Reading, coalesce_writes, new_client, open_connection
from ._delivery import AckedDelivery, Acks, Inbound, MqttDelivery, ack_packet
from ._publishing import Publisher
from ._receiving import install_reader, install_receive_route
from ._subscribing import WILDCARDS, MqttSubscriber, Subscriptions, check_filter
from .options import DEFAULT_ADDRESS, MqttOptions, check_qos, parse_address

logger = logging.getLogger("microbroker.broker.mqtt")

_PUBLISH_OPTIONS = frozenset({"qos", "retain", "confirm"})

__all__ = ["WILDCARDS", "MqttBroker", "MqttSubscriber", "check_filter"]


class MqttBroker(Broker):
    """A microbroker :class:`~microbroker.Broker` on an MQTT server (Mosquitto, EMQX, HiveMQ...).

    ``address`` is ``mqtt://host:port`` (or ``mqtts://`` for TLS; a
    ``user:password@`` part is taken as credentials). The other options are
    the fields of :class:`~microbroker_mqtt.options.MqttOptions`, documented
    in the README: ``protocol``, ``client_id``, ``clean_start``, ``qos``,
    ``receive_maximum``, ``username``/``password``, ``tls``...

    ``publish`` takes ``qos=``, ``retain=`` and ``confirm=`` (wait until the
    server has the message); ``subscribe`` takes ``qos=``.
    """

    name = "mqtt"
    default_address = DEFAULT_ADDRESS

    def __init__(self, address: str | None = None, **options: Any) -> None:
        super().__init__(address, **options)
        self.settings = settings = MqttOptions.from_arguments(options)
        host, port, secure, user, password = parse_address(self._address)
        self._host, self._port, self._secure = host, port, secure
        if settings.username is None and user is not None:
            settings.username, settings.password = user, password
        self._client_id = settings.client_id or f"microbroker-{uuid.uuid4().hex}"
        self.capabilities = Capabilities(
            queue_groups=True,
            # A nack (or a handler error) delivers the message again here, after the retry
            # policy's backoff; at QoS 1/2 its acknowledgement waits, so that a crash
            # meanwhile loses nothing (at QoS 0 a crash loses the retries).
            ack=True,
            at_least_once=settings.qos >= 1,
            persistence=False,
            ordering=True,
            reconnect=True,
            wildcards=WILDCARDS,
            max_message_size=settings.body_limit,
        )
        self._client: Any = None
        self._connected = False
        self._mqtt5 = settings.protocol == "5"
        # Set when a publish is acknowledged, a handler finishes or the link drops, while
        # disconnect() drains; the hot path only reads the flag.
        self._progress = asyncio.Event()
        self._draining = False
        self._publisher = Publisher(settings, self._made_progress)
        self._subscriptions = Subscriptions(self, settings)
        self._reading = Reading()
        #: One Flow for the connection, shared by every subscription's mailbox.
        self._flow = Flow(self._reading.pause, self._reading.resume, high=settings.max_pending)
        self._acks = Acks(self._mqtt5)
        self._background: set[asyncio.Task[None]] = set()

    # Connection ---------------------------------------------------------------------

    @property
    def client_id(self) -> str:
        """The MQTT client id: the ``client_id`` option, or a random one made for this broker."""
        return self._client_id

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def client(self) -> Any:
        """The underlying ``gmqtt.Client`` (``None`` before :meth:`connect`)."""
        return self._client

    async def connect(self) -> None:
        if self._connected:
            return
        client = new_client(self._client_id, self.settings, self._publisher.inflight)
        install_receive_route(client, self._on_publish, self._acks.released)
        install_reader(client)
        client.on_message = self._on_gmqtt_message
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_unsubscribe = self._on_unsubscribe
        self._reading.client = client
        await open_connection(client, self._host, self._port, self._secure, self.settings)
        self._client = client
        self._publisher.client = client
        self._publisher.open = True
        self._connected = True
        self._publisher.grant_room()

    async def disconnect(self) -> None:
        """Wait (up to ``drain_timeout``) for unacknowledged publishes and queued deliveries,
        then close. What is not handled by then stays unacknowledged in the session (the
        server sends it again when it resumes). A broker with a random client id ends its
        session on the server."""
        if not self._connected:
            return
        self._connected = False
        publisher = self._publisher
        publisher.close()  # publishes waiting for room see the broker closed
        client = self._client
        timeout = self.settings.drain_timeout
        self._draining = True
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drain(), timeout)
        finally:
            self._draining = False
        unacknowledged = publisher.inflight.count
        if unacknowledged:
            logger.warning(
                "mqtt: %d publish(es) still unacknowledged by %s:%s after drain_timeout=%ss; "
                "disconnecting drops them (publish with confirm=True to know)",
                unacknowledged,
                self._host,
                self._port,
                timeout,
            )
        subscriptions = self._subscriptions
        filters = list(subscriptions.routes)
        # Each subscription stops once its running handler returns (a stuck one is left
        # behind after drain_timeout: what it holds stays unacknowledged in the session).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(subscriptions.stop_all(), timeout)
        self._acks.abandon()
        for task in list(self._background):
            task.cancel()
        properties: dict[str, Any] = {}
        if self.settings.client_id is None:
            # Nobody can resume a random id: end the session rather than leave it queueing.
            if self._mqtt5:
                properties["session_expiry_interval"] = 0
            elif client.is_connected:
                # MQTT 3.1.1 has no session expiry: unsubscribe instead. The UNSUBACKs come
                # over the socket that _drain() paused; what else arrives now finds no
                # subscriber and goes with the session.
                self._reading.hold(False)
                for mqtt_filter in filters:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(subscriptions.send_unsubscribe(mqtt_filter), timeout)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.disconnect(**properties), timeout)
        publisher.inflight.fail("the broker was disconnected before the server acknowledged it")
        subscriptions.fail_waiting(NotConnected("the broker was disconnected"))
        self._reading.hold(False)
        self._client = None

    async def _drain(self) -> None:
        progress = self._progress
        inflight = self._publisher.inflight
        # The socket keeps being read until the server has acknowledged every publish...
        while inflight.count and self._client.is_connected:
            progress.clear()
            await progress.wait()
        # ...then what was already received gets handled; the rest stays in the session.
        self._reading.hold(True)
        await self._subscriptions.join()

    def _made_progress(self) -> None:
        if self._draining:
            self._progress.set()

    # Publishing ---------------------------------------------------------------------

    def send(self, topic: str, message: Message, **options: Any) -> Coroutine[Any, Any, None]:
        """Publish ``message`` on ``topic`` (``broker.publish(topic, message, ...)``).

        :param qos: 0, 1 or 2; the broker's ``qos`` option when ``None``.
        :param retain: ask the server to keep the message for future subscribers.
        :param confirm: return only when the server has acknowledged the message
            (PUBACK / PUBCOMP). Without it a QoS 1/2 publish returns once the
            message is in the in-flight window, from which it is resent after a
            reconnect; :meth:`disconnect` waits for that window to empty.
        """
        if options and not options.keys() <= _PUBLISH_OPTIONS:
            unknown = ", ".join(sorted(options.keys() - _PUBLISH_OPTIONS))
            raise TypeError(f"mqtt broker publish() takes qos, retain and confirm, not {unknown}")
        # The publisher's coroutine itself: no frame of its own here on the hot path.
        return self._publisher.send(topic, message, **options)

    # Subscribing --------------------------------------------------------------------

    async def receive(
        self,
        topic: str,
        deliver: Handler,
        *,
        queue: str | None,
        auto_ack: bool,
        qos: int | None = None,
        **options: Any,
    ) -> Subscriber:
        """Deliver every message on ``topic`` (``+`` and ``#`` allowed) to ``deliver``.

        With ``queue`` the subscription is the shared subscription
        ``$share/<queue>/<topic>``: each message goes to one member of the group.
        ``qos`` (0, 1, 2) is the highest QoS the server uses to deliver.
        """
        if options:
            raise TypeError(f"mqtt broker subscribe() takes qos, not {', '.join(options)}")
        check_filter(topic)
        if queue is not None and (not queue or any(c in queue for c in "/+#")):
            raise InvalidTopic(
                f"a queue name is the MQTT share name: non-empty, without '/', '+', '#': {queue!r}"
            )
        qos = self.settings.qos if qos is None else check_qos(qos)
        return await self._subscriptions.add(topic, deliver, queue, auto_ack, qos, self._flow)

    # gmqtt callbacks ----------------------------------------------------------------

    def _on_publish(
        self, topic: str, payload: bytes, qos: int, mid: int, properties: dict[str, Any]
    ) -> None:
        """A PUBLISH from the server, not acknowledged yet (the receive route's callback)."""
        acks = self._acks
        if qos and (acks.stale or qos == 2) and self._seen(topic, qos, mid, properties["dup"]):
            return
        subscriptions = self._subscriptions
        ids = properties.get("subscription_identifier")
        receivers: list[MqttSubscriber]
        if ids is not None and len(ids) == 1:
            route = subscriptions.by_id.get(ids[0])
            receivers = route.receivers() if route is not None else []
        else:
            receivers = subscriptions.receivers(topic, ids)
        pairs = properties.get("user_property")
        if not qos:
            if receivers:
                for sub in receivers:
                    sub.push(MqttDelivery(sub, topic, payload, pairs))
            elif subscriptions.resumed:
                subscriptions.keep_orphan(topic, payload, pairs, None)
            return
        if not receivers:
            if subscriptions.resumed:
                entry = acks.received(mid, qos, topic, 1)  # waits as one for its subscription
                subscriptions.keep_orphan(topic, payload, pairs, entry)
            else:
                acks.received(mid, qos, topic, 0)  # nobody subscribes to it: acknowledged
            return
        # Acks.received and MqttSubscriber.push, inlined: this runs once per message.
        entry = Inbound(acks, mid, qos, topic, len(receivers))
        acks.queue.append(entry)
        for sub in receivers:
            delivery = AckedDelivery(sub, topic, payload, pairs, entry)
            if not sub.mailbox.offer(delivery):
                delivery.hand_back()

    def _seen(self, topic: str, qos: int, mid: int, dup: int) -> bool:
        """Whether a QoS 1/2 PUBLISH is one this broker has already (it is then not delivered)."""
        acks = self._acks
        if acks.stale and acks.take_back(mid, topic, bool(dup)):
            return True  # sent again after a reconnect, and still ours: it is queued already
        if qos == 2 and mid in acks.recorded:
            # PUBREC sent and PUBREL not come yet: the same message, acknowledged again.
            acks.write(ack_packet(mid, 2, self._mqtt5))
            return True
        return False

    def _on_gmqtt_message(
        self, client: Any, topic: Any, payload: bytes, qos: int, properties: dict[str, Any]
    ) -> None:
        # The receive route takes every PUBLISH gmqtt could deliver: this is a safety net.
        logger.warning("mqtt: gmqtt delivered a PUBLISH past the receive route (on %r)", topic)
        self._on_publish(str(topic), payload, 0, 0, properties)

    def _on_connect(self, client: Any, session_present: int, rc: int, properties: Any) -> None:
        if not self._connected:  # the first connection: is there a session to resume?
            self._subscriptions.resumed = bool(session_present)
        if not session_present:
            # The server has no session: it will not resend what was not acknowledged.
            self._acks.forget()
        # The callback's client: self._client is not set yet during the first connect.
        connection = client._connection
        coalesce_writes(connection._transport)
        # Acknowledgements go out on this connection (gmqtt's writer skips a closed one).
        self._acks.write = connection._protocol.write_data
        # gmqtt merges our CONNECT properties over the server's CONNACK ones: read the latter.
        connack = getattr(client._package_handler, "_connack_properties", {})
        values = connack.get("receive_maximum") if isinstance(connack, dict) else None
        self._reading.reapply()
        if not session_present and self._subscriptions.routes:
            # The server lost the session (expired, or restarted without persistence).
            task = asyncio.get_running_loop().create_task(self._subscriptions.resubscribe())
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        # The window may have changed with the server's Receive Maximum.
        self._publisher.server_window(int(values[0]) if values else None)

    def _on_disconnect(self, client: Any, packet: Any, exc: Any = None) -> None:
        # What is not acknowledged yet is the server's to send again, once the session resumes.
        self._acks.lost()
        self._progress.set()  # a drain stops waiting for acknowledgements that cannot come
        if self._connected:
            logger.info("mqtt: connection to %s:%s lost; reconnecting", self._host, self._port)

    def _on_subscribe(self, client: Any, mid: int, codes: Any, properties: Any) -> None:
        self._subscriptions.acknowledged(mid, tuple(codes))

    def _on_unsubscribe(self, client: Any, mid: int, codes: Any) -> None:
        self._subscriptions.acknowledged(mid, tuple(codes or ()))
