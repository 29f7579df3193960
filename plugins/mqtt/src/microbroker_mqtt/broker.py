"""The MQTT broker: MQTT 5 (or 3.1.1) on gmqtt, with persistent sessions and shared subscriptions.

How microbroker's model maps onto MQTT:

- a ``Message``'s headers travel as MQTT 5 user properties, the body as the
  payload; under MQTT 3.1.1 (or ``envelope=True``) both travel in go-micro's
  JSON envelope ``{"Header": {...}, "Body": "<base64>"}``, as go-micro's mqtt
  plugin sends them;
- ``subscribe(topic, queue=Q)`` is the shared subscription ``$share/Q/<topic>``;
- ``+`` and ``#`` are the wildcards, ``/`` the level separator;
- the session is persistent (clean start off), so the server keeps the
  subscriptions and queues QoS 1/2 messages while the client is away.

MQTT has no negative acknowledgement: the client acknowledges a message when
it has received it, before the handler runs, and a server never redelivers
within a live session. So ``nack()`` cannot bring a message back and the
broker does not declare ``ack``; a handler error goes to the ``on_error``
hooks. See the README's "Delivery guarantees".
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import uuid
from collections import deque
from collections.abc import Mapping
from typing import Any

import gmqtt  # type: ignore[import-untyped]
from gmqtt.mqtt.constants import MQTTv50, MQTTv311  # type: ignore[import-untyped]
from gmqtt.mqtt.handler import MQTTConnectError  # type: ignore[import-untyped]
from gmqtt.storage import PersistentStorage  # type: ignore[import-untyped]

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
    dispatcher,
)

from ._receiving import speed_up_receiving
from .errors import MqttAuthError, MqttConnectError, SubscribeError
from .options import DEFAULT_ADDRESS, MqttOptions, check_qos, parse_address

logger = logging.getLogger("microbroker.mqtt")

WILDCARDS = Wildcards(separator="/", one="+", many="#")

# CONNACK reason codes that mean "wrong credentials" (MQTT 3.1.1 and MQTT 5).
_AUTH_CODES = {4, 5, 0x86, 0x87, 0x8C}
# Packet ids left for SUBSCRIBE/UNSUBSCRIBE when publishes fill the server's window.
_CONTROL_IDS = 4
_MAX_SUBSCRIPTION_ID = 268_435_455
CONTENT_TYPE = "Content-Type"


class MqttBroker(Broker):
    """A microbroker :class:`~microbroker.Broker` on an MQTT server (Mosquitto, EMQX, HiveMQ...).

    ``address`` is ``mqtt://host:port`` (or ``mqtts://`` for TLS; a
    ``user:password@`` part is taken as credentials). The other options are
    the fields of :class:`~microbroker_mqtt.options.MqttOptions`, documented
    in the README: ``protocol``, ``client_id``, ``clean_start``, ``qos``,
    ``username``/``password``, ``tls``...

    ``publish`` takes ``qos=``, ``retain=`` and ``confirm=`` (wait until the
    server has the message); ``subscribe`` takes ``qos=``.
    """

    name = "mqtt"
    default_address = DEFAULT_ADDRESS

    def __init__(self, address: str | None = None, **options: Any) -> None:
        super().__init__(address, **options)
        self.settings = MqttOptions.from_arguments(options)
        host, port, secure, user, password = parse_address(self._address)
        self._host, self._port, self._secure = host, port, secure
        if self.settings.username is None and user is not None:
            self.settings.username, self.settings.password = user, password
        self._client_id = self.settings.client_id or f"microbroker-{uuid.uuid4().hex}"
        self._body_limit = self.settings.body_limit
        self._envelope = self.settings.uses_envelope
        self.capabilities = Capabilities(
            queue_groups=True,
            ack=False,
            at_least_once=self.settings.qos >= 1,
            persistence=False,
            ordering=True,
            reconnect=True,
            wildcards=WILDCARDS,
            max_message_size=self._body_limit,
        )
        self._client: Any = None
        self._connected = False
        self._inflight = _Inflight(self)
        self._window = self.settings.max_inflight
        # Publishes waiting for room in the window, first come first served: a PUBACK wakes
        # one of them, not all (waking every waiter on every PUBACK made N concurrent
        # publishes cost O(N) wake-ups each, and 12,000 at once ran into publish_timeout).
        # _granted counts the waiters woken with a slot that have not sent yet.
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._granted = 0
        self._routes: dict[str, _Route] = {}
        self._by_id: dict[int, _Route] = {}
        self._next_id = 0
        self._acks: dict[int, asyncio.Future[tuple[int, ...]]] = {}
        self._subs: set[MqttSubscriber] = set()
        self._background: set[asyncio.Task[None]] = set()
        self._control = asyncio.Semaphore(_CONTROL_IDS)
        self._pending = 0
        self._reading_paused = False
        self._online = asyncio.Event()
        # Set when a publish is acknowledged, a handler finishes or the link drops, while
        # disconnect() drains; the hot path only reads the flag.
        self._progress = asyncio.Event()
        self._draining = False
        # A resumed session's queued messages arrive right behind the CONNACK, before the
        # application has subscribed again: kept here until a subscription takes them.
        self._orphans: deque[tuple[str, bytes, Mapping[str, Any]]] = deque()
        self._resumed = False

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
        s = self.settings
        properties: dict[str, Any] = {}
        if s.protocol == "5":
            properties["session_expiry_interval"] = s.session_expiry
        client = gmqtt.Client(
            self._client_id,
            clean_session=s.clean_start,
            # MQTT has no nack, and gmqtt forces it under 3.1.1: ack on receipt, in order.
            optimistic_acknowledgement=True,
            persistent_storage=self._inflight,
            logger=logger,
            **properties,
        )
        client.set_config({"reconnect_retries": s.reconnect_retries, "reconnect_delay": 0})
        speed_up_receiving(client)
        client.on_message = self._on_message
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_unsubscribe = self._on_unsubscribe
        if s.username is not None:
            client.set_auth_credentials(s.username, s.password)
        version = MQTTv50 if s.protocol == "5" else MQTTv311
        where = f"{self._host}:{self._port}"
        try:
            await asyncio.wait_for(
                client.connect(
                    self._host,
                    self._port,
                    ssl=s.ssl_context(self._secure),
                    keepalive=s.keepalive,
                    version=version,
                ),
                s.connect_timeout,
            )
        except MQTTConnectError as exc:
            await _abandon(client)
            code = getattr(exc, "_code", None)
            if code in _AUTH_CODES:
                raise MqttAuthError(
                    f"the MQTT server at {where} refused the credentials ({exc}): check "
                    "username and password (MICRO_MQTT_USERNAME, MICRO_MQTT_PASSWORD)"
                ) from None
            raise MqttConnectError(
                f"the MQTT server at {where} refused the connection ({exc})"
            ) from None
        except TimeoutError:
            await _abandon(client)
            raise MqttConnectError(
                f"the MQTT server at {where} did not accept the connection within "
                f"{s.connect_timeout}s: is it an MQTT server, and is TLS "
                f"{'on' if s.ssl_context(self._secure) else 'off'} on both sides?"
            ) from None
        except OSError as exc:
            await _abandon(client)
            raise MqttConnectError(
                f"cannot reach the MQTT server at {where}: {exc}. Is it running, and is the "
                "address right? (address=... or MICRO_BROKER_ADDRESS=mqtt://host:port)"
            ) from None
        # Reconnection is paced by gmqtt from now on (the first attempt had none to wait for).
        client.set_config(
            {"reconnect_retries": s.reconnect_retries, "reconnect_delay": s.reconnect_delay}
        )
        self._client = client
        self._connected = True
        self._online.set()
        self._grant_room()

    async def disconnect(self) -> None:
        """Wait (up to ``drain_timeout``) for unacknowledged publishes and queued deliveries,
        then close. A broker with a random client id ends its session on the server."""
        if not self._connected:
            return
        self._connected = False
        self._fail_waiters()  # publishes waiting for room see the broker closed
        client = self._client
        timeout = self.settings.drain_timeout
        self._draining = True
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drain(), timeout)
        finally:
            self._draining = False
        unacknowledged = self._inflight.count
        if unacknowledged:
            logger.warning(
                "mqtt: %d publish(es) still unacknowledged by %s:%s after drain_timeout=%ss; "
                "disconnecting drops them (publish with confirm=True to know)",
                unacknowledged,
                self._host,
                self._port,
                timeout,
            )
        for sub in list(self._subs):
            sub._stop()
        self._subs.clear()
        for task in list(self._background):
            task.cancel()
        properties: dict[str, Any] = {}
        if self.settings.client_id is None:
            # Nobody can resume a random id: end the session rather than leave it queueing.
            if self.settings.protocol == "5":
                properties["session_expiry_interval"] = 0
            elif client.is_connected:
                # MQTT 3.1.1 has no session expiry: unsubscribe instead. The UNSUBACKs come
                # over the socket that _drain() paused (waiting for them there cost
                # drain_timeout per disconnect); what else arrives now finds no subscriber
                # and goes with the session.
                self._resume_reading()
                for route in list(self._routes.values()):
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(self._send_unsubscribe(route.filter), timeout)
        self._routes.clear()
        self._by_id.clear()
        self._orphans.clear()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.disconnect(**properties), timeout)
        self._inflight.abandon("the broker was disconnected before the server acknowledged it")
        for future in self._acks.values():
            if not future.done():
                future.set_exception(NotConnected("the broker was disconnected"))
        self._acks.clear()
        self._online.clear()
        self._client = None

    async def _drain(self) -> None:
        progress = self._progress
        # The socket keeps being read until the server has acknowledged every publish...
        while self._inflight.count and self._client.is_connected:
            progress.clear()
            await progress.wait()
        # ...then what was already received gets handled; the rest stays in the session.
        self._pause_reading()
        while any(sub._busy for sub in self._subs):
            progress.clear()
            await progress.wait()

    # Publishing ---------------------------------------------------------------------

    async def publish(
        self,
        topic: str,
        message: Message,
        *,
        qos: int | None = None,
        retain: bool = False,
        confirm: bool = False,
        **options: Any,
    ) -> None:
        """Publish ``message`` on ``topic``.

        :param qos: 0, 1 or 2; the broker's ``qos`` option when ``None``.
        :param retain: ask the server to keep the message for future subscribers.
        :param confirm: return only when the server has acknowledged the message
            (PUBACK / PUBCOMP). Without it a QoS 1/2 publish returns once the
            message is in the in-flight window, from which it is resent after a
            reconnect; :meth:`disconnect` waits for that window to empty.
        """
        self._check_publish(topic, message)
        if options:
            raise TypeError(
                f"mqtt broker publish() takes qos, retain and confirm, not {', '.join(options)}"
            )
        if "+" in topic or "#" in topic:
            raise InvalidTopic(f"MQTT cannot publish to a topic with wildcards: {topic!r}")
        if topic.startswith("$"):
            raise InvalidTopic(f"MQTT topics starting with '$' are reserved: {topic!r}")
        if len(topic) > 16383 and len(topic.encode()) > 65535:
            raise InvalidTopic("an MQTT topic is at most 65535 bytes of UTF-8")
        qos = self.settings.qos if qos is None else check_qos(qos)
        body = message.body
        if len(body) > self._body_limit:
            raise PublishError(
                f"a {len(body)}-byte body is larger than the {self._body_limit} bytes an MQTT "
                "message can carry here (max_message_size)"
            )
        if type(body) is not bytes:
            body = bytes(body)
        headers = message.headers
        if self._envelope:
            body = _envelope(headers, body)
            properties = b""
        elif headers:
            properties = _user_properties(headers)
        else:
            properties = b""
        if qos == 0:
            self._send_publish(topic, body, properties, 0, retain)
            return
        inflight = self._inflight
        if self._waiters or inflight.count + self._granted >= self._window:
            await self._wait_for_room()
        waiter: asyncio.Future[None] | None = None
        if confirm:
            waiter = asyncio.get_running_loop().create_future()
            inflight.next_waiter = waiter
        try:
            self._send_publish(topic, body, properties, qos, retain)
        except OverflowError as exc:  # no packet id left: the server's window is full
            self._grant_room()  # the slot this publish had goes to the next in line
            raise PublishError(f"no MQTT packet id free for the publish: {exc}") from None
        finally:
            inflight.next_waiter = None
        if waiter is not None:
            try:
                await asyncio.wait_for(asyncio.shield(waiter), self.settings.publish_timeout)
            except TimeoutError:
                raise PublishError(
                    f"the MQTT server did not acknowledge the publish on {topic!r} within "
                    f"{self.settings.publish_timeout}s; it is kept and resent on reconnect"
                ) from None

    def _send_publish(
        self, topic: str, body: bytes, properties: bytes, qos: int, retain: bool
    ) -> None:
        """gmqtt's ``Client.publish``, with the packet built here.

        gmqtt builds user properties through a generic, per-byte property codec
        that cost more than the rest of a publish; the bytes are the same.
        """
        client = self._client
        protocol = client._connection._protocol
        topic_bytes = _encoded_topic(topic)
        mqtt5 = self.settings.protocol == "5"
        length = len(topic_bytes) + len(body)
        if mqtt5:
            length += _vbi_size(len(properties)) + len(properties)
        if qos:
            length += 2
            mid = protocol.id_generator.next_id()
        packet = bytearray((0x30 | (qos << 1) | (1 if retain else 0),))
        packet += _vbi(length)
        packet += topic_bytes
        if qos:
            packet += mid.to_bytes(2, "big")
        if mqtt5:
            packet += _vbi(len(properties))
            packet += properties
        packet += body
        protocol.write_data(packet)
        if qos:
            client._persistent_storage.push_message(mid, packet)

    async def _wait_for_room(self) -> None:
        """Wait for a slot in the in-flight window, in turn: returns holding one, which the
        caller uses at once (no ``await`` between this and ``_send_publish``)."""
        if not self._connected:
            raise NotConnected("the mqtt broker was disconnected while the publish waited")
        loop = asyncio.get_running_loop()
        turn: asyncio.Future[None] = loop.create_future()
        self._waiters.append(turn)
        self._grant_room()  # a slot may be free already (waiters ahead gave up)
        timeout = self.settings.publish_timeout
        expiry = loop.call_later(timeout, self._expire, turn, timeout)
        try:
            await turn
        except BaseException:
            # Timed out, cancelled or disconnected. A slot granted just before that (the
            # task had not run yet) is handed on, or the window would shrink for good.
            if turn.done() and not turn.cancelled() and turn.exception() is None:
                self._granted -= 1
                self._grant_room()
            raise
        finally:
            expiry.cancel()
        self._granted -= 1
        if not self._connected:
            raise NotConnected("the mqtt broker was disconnected while the publish waited")

    def _expire(self, turn: asyncio.Future[None], timeout: float) -> None:
        # The future stays in the queue (removing it is O(n)); _grant_room skips it.
        if not turn.done():
            turn.set_exception(
                PublishError(
                    f"no room in the in-flight window within {timeout}s: "
                    f"{self._inflight.count} publishes wait for the MQTT server's "
                    "acknowledgement. Is the server reachable? (publish_timeout, "
                    "max_inflight; the server's Receive Maximum also bounds the window)"
                )
            )

    def _grant_room(self) -> None:
        """Wake the first waiting publishes, one for each free slot of the window."""
        waiters = self._waiters
        free = self._window - self._inflight.count - self._granted
        while free > 0 and waiters:
            turn = waiters.popleft()
            if turn.done():  # timed out or cancelled while waiting
                continue
            turn.set_result(None)
            self._granted += 1
            free -= 1

    def _fail_waiters(self) -> None:
        waiters, self._waiters = self._waiters, deque()
        for turn in waiters:
            if not turn.done():
                turn.set_exception(
                    NotConnected("the mqtt broker was disconnected while the publish waited")
                )

    def _released(self) -> None:
        if self._waiters:
            self._grant_room()
        if self._draining:
            self._progress.set()

    # Subscribing --------------------------------------------------------------------

    async def subscribe(
        self,
        topic: str,
        handler: Handler,
        *,
        queue: str | None = None,
        auto_ack: bool = True,
        qos: int | None = None,
        **options: Any,
    ) -> MqttSubscriber:
        """Call ``handler`` for every message on ``topic`` (``+`` and ``#`` allowed).

        With ``queue`` the subscription is the shared subscription
        ``$share/<queue>/<topic>``: each message goes to one member of the group.
        ``qos`` (0, 1, 2) is the highest QoS the server uses to deliver.
        """
        self._check_subscribe(topic)
        if options:
            raise TypeError(f"mqtt broker subscribe() takes qos, not {', '.join(options)}")
        check_filter(topic)
        if queue is not None and (not queue or any(c in queue for c in "/+#")):
            raise InvalidTopic(
                f"a queue name is the MQTT share name: non-empty, without '/', '+', '#': {queue!r}"
            )
        qos = self.settings.qos if qos is None else check_qos(qos)
        mqtt_filter = f"$share/{queue}/{topic}" if queue else topic
        route = self._routes.get(mqtt_filter)
        sub = MqttSubscriber(self, topic, handler, queue, auto_ack, mqtt_filter)
        if route is not None:
            route.subs.append(sub)
            self._subs.add(sub)
            return sub
        route = _Route(mqtt_filter, topic, self._new_id(), qos)
        route.subs.append(sub)
        # Registered before SUBSCRIBE: the first message may come right behind the SUBACK.
        self._routes[mqtt_filter] = route
        self._by_id[route.id] = route
        self._subs.add(sub)
        if self._orphans:
            self._adopt(route)
        try:
            codes = await self._send_subscribe(route)
        except BaseException:
            self._drop_route(route)
            sub._stop()
            raise
        if not codes or codes[0] >= 0x80:
            self._drop_route(route)
            sub._stop()
            code = codes[0] if codes else None
            hint = " (shared subscriptions need MQTT 5 or a server that supports them)"
            raise SubscribeError(
                f"the MQTT server refused the subscription to {mqtt_filter!r} "
                f"(reason code {code:#x}){hint if queue else ''}"
                if code is not None
                else f"the MQTT server refused the subscription to {mqtt_filter!r}"
            )
        return sub

    def _new_id(self) -> int:
        self._next_id = self._next_id % _MAX_SUBSCRIPTION_ID + 1
        return self._next_id

    async def _send_subscribe(self, route: _Route) -> tuple[int, ...]:
        # At most _CONTROL_IDS SUBSCRIBE/UNSUBSCRIBE in flight: packet ids are shared
        # with publishes and bounded by the server's receive maximum, so many
        # subscriptions made at once wait their turn instead of running out of ids.
        async with self._control:
            client = self._client
            kwargs: dict[str, Any] = {}
            if self.settings.protocol == "5":
                kwargs["subscription_identifier"] = route.id
            mid = client.subscribe(gmqtt.Subscription(route.filter, qos=route.qos), **kwargs)
            return await self._wait_ack(mid, f"SUBACK for {route.filter!r}")

    async def _send_unsubscribe(self, mqtt_filter: str) -> None:
        async with self._control:
            await self._send_unsubscribe_now(mqtt_filter)

    async def _send_unsubscribe_now(self, mqtt_filter: str) -> None:
        client = self._client
        if mqtt_filter.isascii():
            mid = client.unsubscribe(mqtt_filter)
        else:
            # gmqtt sizes an UNSUBSCRIBE by the characters of a str filter, not its UTF-8
            # bytes, and the server drops the connection on the malformed packet.
            client._remove_subscriptions(mqtt_filter)
            mid = client._connection.unsubscribe(mqtt_filter.encode())
        await self._wait_ack(mid, f"UNSUBACK for {mqtt_filter!r}")

    async def _wait_ack(self, mid: int, what: str) -> tuple[int, ...]:
        future: asyncio.Future[tuple[int, ...]] = asyncio.get_running_loop().create_future()
        self._acks[mid] = future
        try:
            return await asyncio.wait_for(future, self.settings.publish_timeout)
        except TimeoutError:
            raise SubscribeError(
                f"no {what} from the MQTT server within {self.settings.publish_timeout}s"
            ) from None
        finally:
            self._acks.pop(mid, None)

    def _drop_route(self, route: _Route) -> None:
        if self._routes.get(route.filter) is route:
            del self._routes[route.filter]
        self._by_id.pop(route.id, None)

    async def _unsubscribe(self, sub: MqttSubscriber) -> None:
        self._subs.discard(sub)
        route = self._routes.get(sub.filter)
        if route is None or sub not in route.subs:
            return
        route.subs.remove(sub)
        if route.subs:
            return
        self._drop_route(route)
        if self._connected and self._client is not None and self._client.is_connected:
            await self._send_unsubscribe(route.filter)

    # gmqtt callbacks ----------------------------------------------------------------

    def _on_message(
        self, client: Any, topic: str, payload: bytes, qos: int, properties: dict[str, Any]
    ) -> int:
        ids = properties.get("subscription_identifier")
        if ids:
            by_id = self._by_id
            routes = [route for i in ids if (route := by_id.get(i)) is not None]
        else:
            # MQTT 3.1.1 (or a server that leaves the identifiers out): match locally.
            routes = [r for r in self._routes.values() if r.matches(topic)]
        if not routes:
            if self._resumed:
                self._keep_orphan(topic, payload, properties)
            return 0
        message = self._decode(payload, properties)
        receivers = [sub for route in routes for sub in route.receivers() if sub._active]
        # Several handlers share the message: each copies it when (and if) it reads it.
        shared = len(receivers) > 1
        for sub in receivers:
            sub._push(_MqttDelivery(topic, message, sub.queue, shared))
        self._received(len(receivers))
        return 0

    def _keep_orphan(self, topic: str, payload: bytes, properties: Mapping[str, Any]) -> None:
        orphans = self._orphans
        if len(orphans) >= self.settings.max_pending:
            dropped, _, _ = orphans.popleft()
            logger.warning(
                "mqtt: more than %d messages of the resumed session wait for a subscription; "
                "dropping the oldest (on %r)",
                self.settings.max_pending,
                dropped,
            )
        orphans.append((topic, payload, properties))

    def _adopt(self, route: _Route) -> None:
        """Hand the new subscription what the resumed session delivered before it existed."""
        kept: deque[tuple[str, bytes, Mapping[str, Any]]] = deque()
        for topic, payload, properties in self._orphans:
            if route.matches(topic):
                for sub in route.receivers():
                    if sub._active:
                        message = self._decode(payload, properties)
                        sub._push(_MqttDelivery(topic, message, sub.queue, False))
                        self._received()
            else:
                kept.append((topic, payload, properties))
        self._orphans = kept

    def _decode(self, payload: bytes, properties: Mapping[str, Any]) -> Message:
        if self._envelope:
            decoded = _unwrap(payload)
            if decoded is not None:
                return decoded
            # Not an envelope (a device publishing plain MQTT): the payload as it is.
            return Message(payload, {})
        pairs = properties.get("user_property")
        return Message(payload, dict(pairs) if pairs else {})

    def _on_connect(self, client: Any, session_present: int, rc: int, properties: Any) -> None:
        if not self._connected:  # the first connection: is there a session to resume?
            self._resumed = bool(session_present)
        # The callback's client: self._client is not set yet during the first connect.
        transport = getattr(getattr(client, "_connection", None), "_transport", None)
        if transport is not None:
            _coalesce_writes(transport)
        values = properties.get("receive_maximum") if isinstance(properties, dict) else None
        if values:
            receive_maximum = int(values[0])
            self._window = max(1, min(self.settings.max_inflight, receive_maximum - _CONTROL_IDS))
        self._reading_paused = False
        if self._pending > self.settings.max_pending:
            self._pause_reading()
        if not session_present and self._routes:
            # The server lost the session (expired, or restarted without persistence).
            task = asyncio.get_running_loop().create_task(self._resubscribe())
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        self._grant_room()  # the window may have changed with the server's Receive Maximum

    async def _resubscribe(self) -> None:
        for route in list(self._routes.values()):
            try:
                await self._send_subscribe(route)
            except Exception as exc:  # reported; the next reconnect tries again
                logger.warning("mqtt: resubscribing to %r failed: %s", route.filter, exc)

    def _on_disconnect(self, client: Any, packet: Any, exc: Any = None) -> None:
        self._progress.set()  # a drain stops waiting for acknowledgements that cannot come
        if self._connected:
            logger.info("mqtt: connection to %s:%s lost; reconnecting", self._host, self._port)

    def _on_subscribe(self, client: Any, mid: int, codes: Any, properties: Any) -> None:
        future = self._acks.get(mid)
        if future is not None and not future.done():
            future.set_result(tuple(codes))

    def _on_unsubscribe(self, client: Any, mid: int, codes: Any) -> None:
        future = self._acks.get(mid)
        if future is not None and not future.done():
            future.set_result(tuple(codes or ()))

    # Flow control of deliveries ----------------------------------------------------

    def _received(self, count: int = 1) -> None:
        """Count ``count`` deliveries queued; stop reading past ``max_pending`` of them."""
        self._pending += count
        if self._pending > self.settings.max_pending and not self._reading_paused:
            self._pause_reading()

    def _handled(self, count: int = 1) -> None:
        """Count ``count`` deliveries taken off the queues; read again at half ``max_pending``."""
        self._pending -= count
        if (
            self._reading_paused
            and self._pending <= self.settings.max_pending // 2
            and self._connected
        ):
            self._resume_reading()

    def _transport(self) -> Any:
        # gmqtt has no flow control of its own: pause the socket under it.
        connection = getattr(self._client, "_connection", None)
        return getattr(connection, "_transport", None)

    def _pause_reading(self) -> None:
        transport = self._transport()
        if transport is not None and not transport.is_closing():
            with contextlib.suppress(Exception):
                transport.pause_reading()
        self._reading_paused = True

    def _resume_reading(self) -> None:
        transport = self._transport()
        if transport is not None and not transport.is_closing():
            with contextlib.suppress(Exception):
                transport.resume_reading()
        self._reading_paused = False


class MqttSubscriber(Subscriber):
    """A subscription of :class:`MqttBroker`: its handler runs on one task, in arrival order."""

    def __init__(
        self,
        broker: MqttBroker,
        topic: str,
        handler: Handler,
        queue: str | None,
        auto_ack: bool,
        mqtt_filter: str,
    ) -> None:
        super().__init__(topic, queue, auto_ack)
        self.filter = mqtt_filter
        """The MQTT topic filter subscribed to (``$share/<queue>/<topic>`` for a queue group)."""
        self._broker = broker
        self._handler = handler
        self._queue: deque[Delivery] = deque()
        # Set while the worker waits for a delivery (a bare future: cheaper than an Event).
        self._waiter: asyncio.Future[None] | None = None
        self._active = True
        self._running = False
        self._task = asyncio.get_running_loop().create_task(self._run())

    @property
    def active(self) -> bool:
        return self._active

    @property
    def _busy(self) -> bool:
        return bool(self._queue) or self._running

    async def unsubscribe(self) -> None:
        if not self._active:
            return
        self._stop()
        await self._broker._unsubscribe(self)

    def _stop(self) -> None:
        self._active = False
        broker = self._broker
        broker._handled(len(self._queue))
        self._queue.clear()
        self._task.cancel()

    def _push(self, delivery: Delivery) -> None:
        """Queue ``delivery`` (the caller counts it as pending with the broker)."""
        self._queue.append(delivery)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def _run(self) -> None:
        queue = self._queue
        broker = self._broker
        settled = dispatcher(self._handler, self.auto_ack)
        loop = asyncio.get_running_loop()
        while True:
            if not queue:
                waiter = self._waiter = loop.create_future()
                await waiter
                continue
            delivery = queue.popleft()
            self._running = True
            broker._handled()
            try:
                await settled(delivery)
            except Exception:  # dispatch reports handler errors; this is the hook failing
                logger.exception("mqtt: delivery on %r failed", delivery.topic)
            finally:
                self._running = False
                if broker._draining:
                    broker._progress.set()


class _MqttDelivery(Delivery):
    """A delivery from MQTT: the client has acknowledged it to the server already.

    A message fanned out to several local subscribers is shared by their
    deliveries until one reads :attr:`message`, which then gets a copy of its
    own to change: a typed handler that reads only the body and content type
    copies nothing.
    """

    # ``body`` is a plain attribute here (Delivery's is a property): read once per message.
    __slots__ = ("_msg", "_shared", "body")

    acks_locally = True

    def __init__(self, topic: str, message: Message, queue: str | None, shared: bool) -> None:
        # Set directly rather than through Delivery.__init__: this runs once per delivery.
        self.topic = topic
        self._msg = message
        self._shared = shared
        self.body = message.body  # type: ignore[misc]  # a slot here, a property in Delivery
        self.queue = queue
        self.attempt = 1
        self._state = 0

    @property
    def message(self) -> Message:
        """The message: the body and its headers (a copy of its own, once read)."""
        message = self._msg
        if self._shared:
            message = self._msg = Message(message.body, dict(message.headers))
            self._shared = False
        return message

    @message.setter
    def message(self, message: Message) -> None:
        self._msg = message
        self._shared = False
        self.body = message.body  # type: ignore[misc]

    @property
    def content_type(self) -> str | None:
        return self._msg.header(CONTENT_TYPE)  # read without copying


class _Route:
    """One MQTT subscription (topic filter) and the local subscribers that share it.

    The server sends one copy per subscription. A plain route hands it to every
    local subscriber; a shared one (``$share/<queue>/...``) is one member of the
    group as the server sees it, so it hands each message to one local member,
    in turn.
    """

    __slots__ = ("filter", "id", "levels", "literal", "qos", "shared", "subs", "topic", "turn")

    def __init__(self, mqtt_filter: str, topic: str, subscription_id: int, qos: int) -> None:
        self.filter = mqtt_filter
        self.topic = topic
        self.id = subscription_id
        self.qos = qos
        self.subs: list[MqttSubscriber] = []
        self.shared = mqtt_filter.startswith("$share/")
        self.turn = 0
        self.literal = "+" not in topic and "#" not in topic
        self.levels = topic.split("/")

    def receivers(self) -> list[MqttSubscriber]:
        """The local subscribers that get the next message."""
        subs = self.subs
        if not self.shared or len(subs) < 2:
            return subs
        self.turn = turn = (self.turn + 1) % len(subs)
        return [subs[turn]]

    def matches(self, topic: str) -> bool:
        if self.literal:
            return topic == self.topic
        if topic.startswith("$"):
            return False
        levels = topic.split("/")
        for i, level in enumerate(self.levels):
            if level == "#":
                return True
            if i >= len(levels) or (level != "+" and level != levels[i]):
                return False
        return len(levels) == len(self.levels)


class _Inflight(PersistentStorage):  # type: ignore[misc]
    """gmqtt's store of unacknowledged QoS 1/2 publishes, which is also the publish window.

    gmqtt pushes each QoS 1/2 packet here when it sends it, removes it on
    PUBACK/PUBCOMP and replays what is left after a reconnect. Watching it gives
    the broker flow control and ``confirm=True`` without a second bookkeeping.
    """

    def __init__(self, broker: MqttBroker) -> None:
        super().__init__()
        self._broker = broker
        self._waiters: dict[int, asyncio.Future[None]] = {}
        self.next_waiter: asyncio.Future[None] | None = None

    @property
    def count(self) -> int:
        return len(self._messages)

    def push_message(self, mid: int, raw_package: bytes) -> None:
        # A PUBREC swaps the PUBLISH for its PUBREL under the same id: not a new message.
        waiter = self.next_waiter
        if waiter is not None and mid not in self._messages:
            self._waiters[mid] = waiter
            self.next_waiter = None
        super().push_message(mid, raw_package)

    def remove_message_by_mid(self, mid: int) -> None:
        if mid not in self._messages:
            return
        super().remove_message_by_mid(mid)
        waiter = self._waiters.pop(mid, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        self._broker._released()

    def clear(self) -> None:
        if self._messages:
            # gmqtt clears the store when the server says it has no session for us.
            logger.warning(
                "mqtt: the server did not keep the session; %d unacknowledged publishes are lost",
                len(self._messages),
            )
        super().clear()
        self._fail("the MQTT server lost the session before acknowledging the publish")
        self._broker._released()

    def abandon(self, reason: str) -> None:
        self._fail(reason)

    def _fail(self, reason: str) -> None:
        waiters, self._waiters = self._waiters, {}
        for waiter in waiters.values():
            if not waiter.done():
                waiter.set_exception(PublishError(reason))


def check_filter(topic: str) -> None:
    """Raise :class:`InvalidTopic` for an MQTT topic filter that a server would refuse."""
    if topic.startswith("$share/"):
        raise InvalidTopic(
            f"subscribe to {topic[7:]!r} with queue=... instead of the '$share/' prefix"
        )
    levels = topic.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise InvalidTopic(f"'#' must be a whole last level of the topic filter: {topic!r}")
        if "+" in level and level != "+":
            raise InvalidTopic(f"'+' must be a whole level of the topic filter: {topic!r}")
    if len(topic.encode()) > 65535:
        raise InvalidTopic("an MQTT topic filter is at most 65535 bytes of UTF-8")


def _envelope(headers: Mapping[str, str], body: bytes) -> bytes:
    """go-micro's broker.Message as Go's encoding/json writes it: Header map, Body base64."""
    return json.dumps(
        {"Header": headers, "Body": base64.b64encode(body).decode("ascii")},
        ensure_ascii=False,
        separators=(",", ":"),
    ).encode()


def _unwrap(payload: bytes) -> Message | None:
    try:
        value = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(value, dict):
        return None
    header = value.get("Header") or {}
    body = value.get("Body") or ""
    if not isinstance(header, dict) or not isinstance(body, str):
        return None
    try:
        raw = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        return None
    return Message(raw, {str(k): str(v) for k, v in header.items()})


_TOPICS: dict[str, bytes] = {}
_KEYS: dict[str, bytes] = {}


def _encoded_topic(topic: str) -> bytes:
    """The topic as an MQTT UTF-8 string (two-byte length, then the bytes), cached."""
    encoded = _TOPICS.get(topic)
    if encoded is None:
        raw = topic.encode()
        encoded = len(raw).to_bytes(2, "big") + raw
        if len(_TOPICS) >= 4096:
            _TOPICS.clear()
        _TOPICS[topic] = encoded
    return encoded


def _user_properties(headers: Mapping[str, str]) -> bytes:
    """Headers as MQTT 5 user properties (id 0x26, then name and value as UTF-8 strings)."""
    parts: list[bytes] = []
    keys = _KEYS
    for name, value in headers.items():
        key = keys.get(name)
        if key is None:
            raw = name.encode()
            key = b"\x26" + len(raw).to_bytes(2, "big") + raw
            if len(keys) < 1024:
                keys[name] = key
        data = value.encode()
        parts.append(key)
        parts.append(len(data).to_bytes(2, "big"))
        parts.append(data)
    return b"".join(parts)


def _vbi(value: int) -> bytes:
    """An MQTT variable byte integer."""
    if value < 128:
        return _SMALL_VBI[value]
    out = bytearray()
    while True:
        value, digit = divmod(value, 128)
        if value:
            out.append(digit | 0x80)
        else:
            out.append(digit)
            return bytes(out)


_SMALL_VBI = [bytes((n,)) for n in range(128)]


def _vbi_size(value: int) -> int:
    return 1 if value < 128 else 2 if value < 16_384 else 3 if value < 2_097_152 else 4


#: Bytes gathered before a write goes out without waiting for the end of the loop iteration.
_COALESCE_LIMIT = 64 * 1024


def _coalesce_writes(transport: Any) -> None:
    """Gather the packets written in one event-loop iteration into one socket send.

    gmqtt writes every PUBLISH and every PUBACK to the transport on its own, and
    asyncio makes each a ``send()`` system call: at QoS 1 that was a fifth of the
    time of a publish->deliver round. A publisher that does not wait (its window is
    open) now fills one buffer that goes out when the loop next runs its callbacks,
    or at ``_COALESCE_LIMIT`` bytes; ``close()`` and ``abort()`` send what is left
    first, so a DISCONNECT written just before is not lost.
    """
    if getattr(transport, "_microbroker_coalesced", False):
        return
    loop = asyncio.get_running_loop()
    write = transport.write
    close = transport.close
    buffer = bytearray()
    scheduled = False

    def flush() -> None:
        nonlocal scheduled
        scheduled = False
        if buffer:
            data = bytes(buffer)
            buffer.clear()
            if not transport.is_closing():
                write(data)

    def buffered_write(data: bytes) -> None:
        nonlocal scheduled
        if len(data) >= _COALESCE_LIMIT:
            # A large packet goes out as it is, after what was gathered: no copy into the buffer.
            flush()
            if not transport.is_closing():
                write(data)
            return
        buffer.extend(data)
        if len(buffer) >= _COALESCE_LIMIT:
            flush()
        elif not scheduled:
            scheduled = True
            loop.call_soon(flush)

    def flushing_close() -> None:
        flush()
        close()

    transport.write = buffered_write
    transport.close = flushing_close
    transport._microbroker_coalesced = True


async def _abandon(client: Any) -> None:
    """Stop a client whose first connection failed, so that gmqtt does not retry it forever."""
    with contextlib.suppress(Exception):
        client.stop_reconnect()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(client.disconnect(), 1.0)
