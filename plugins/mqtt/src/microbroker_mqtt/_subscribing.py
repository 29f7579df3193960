"""Subscribing: MQTT subscriptions (routes), the local subscribers that share them, their queues.

The server sends one copy of a message per MQTT subscription (topic filter).
A :class:`Route` is one such subscription and the local subscribers on it: a
plain route hands each message to all of them, a shared one
(``$share/<queue>/...``, one member of the group as the server sees it) to
one of them, in turn. Each local subscriber has a
:class:`~microbroker.transport.Mailbox` with ``Overflow.PAUSE``: the
connection's :class:`~microbroker.transport.Flow` stops reading the socket
when too many deliveries wait, a backstop behind the receive window.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import zlib
from collections import deque
from typing import TYPE_CHECKING, Any

import gmqtt  # type: ignore[import-untyped]

from microbroker import InvalidTopic, Wildcards
from microbroker.transport import Flow, Handler, Mailbox, Overflow, Subscriber

from ._delivery import AckedDelivery, Inbound, MqttDelivery
from ._envelope import Pairs
from .errors import SubscribeError
from .options import MqttOptions

if TYPE_CHECKING:
    from .broker import MqttBroker

logger = logging.getLogger("microbroker.broker.mqtt")

WILDCARDS = Wildcards(
    separator="/", one="+", many="#", many_matches_zero=True
)  # "a/#" gets "a" too

_MAX_SUBSCRIPTION_ID = 268_435_455
# SUBSCRIBE/UNSUBSCRIBE in flight at once: packet ids are shared with publishes and
# bounded by the server's Receive Maximum.
_CONTROL_IDS = 4


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


class MqttSubscriber(Subscriber):
    """A subscription of :class:`~microbroker_mqtt.MqttBroker`.

    Its handler runs on one task, in arrival order (``max_concurrency`` aside).
    """

    def __init__(
        self,
        broker: MqttBroker,
        topic: str,
        deliver: Handler,
        queue: str | None,
        auto_ack: bool,
        mqtt_filter: str,
        flow: Flow,
    ) -> None:
        super().__init__(topic, queue, auto_ack)
        self.filter = mqtt_filter
        """The MQTT topic filter subscribed to (``$share/<queue>/<topic>`` for a queue group)."""
        #: Messages travel in go-micro's envelope (read by each delivery).
        self.enveloped = broker.settings.uses_envelope
        self._broker = broker
        self._active = True
        # Nacked deliveries waiting for their next attempt.
        self._timers: dict[MqttDelivery, asyncio.TimerHandle] = {}
        #: Its queue and worker.
        self.mailbox: Mailbox[MqttDelivery] = Mailbox(
            deliver,
            capacity=broker.settings.max_pending,
            overflow=Overflow.PAUSE,
            flow=flow,
            name=f"mqtt subscription to {mqtt_filter!r}",
        )

    @property
    def active(self) -> bool:
        return self._active

    async def unsubscribe(self) -> None:
        if not self._active:
            return
        await self._broker._subscriptions.remove(self)

    def push(self, delivery: MqttDelivery) -> None:
        """Queue ``delivery``; handed back if this subscription has ended."""
        if not self.mailbox.offer(delivery):
            delivery.hand_back()

    def redeliver(self, delivery: MqttDelivery, delay: float) -> None:
        """The next attempt at a nacked delivery, after ``delay`` seconds, still unacknowledged."""
        again = delivery.again()
        if not self._active:
            again.hand_back()
            return
        if delay > 0:
            loop = asyncio.get_running_loop()
            self._timers[again] = loop.call_later(delay, self._redeliver_now, again)
        else:
            self.push(again)

    def _redeliver_now(self, delivery: MqttDelivery) -> None:
        del self._timers[delivery]
        self.push(delivery)

    async def join(self) -> None:
        """Wait until what is queued has been handled."""
        await self.mailbox.join()

    def end(self) -> None:
        """Take no more (what comes is handed back); :meth:`stop` finishes the job."""
        self._active = False

    async def stop(self) -> list[MqttDelivery]:
        """Take no more; let a running handler finish; return the deliveries left over."""
        self._active = False
        left = await self.mailbox.close()
        for delivery, timer in self._timers.items():
            timer.cancel()
            left.append(delivery)
        self._timers.clear()
        return left


class Route:
    """One MQTT subscription (topic filter) and the local subscribers that share it."""

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


# A message of a resumed session that came before its subscription: topic, payload, user
# properties, its acknowledgement (QoS 1/2), and when it came.
_Orphan = tuple[str, bytes, Pairs | None, Inbound | None, float]


class Subscriptions:
    """The routes of one broker: SUBSCRIBE and UNSUBSCRIBE, and where each message goes."""

    def __init__(self, broker: MqttBroker, settings: MqttOptions) -> None:
        self._broker = broker
        self.settings = settings
        self.routes: dict[str, Route] = {}
        self.by_id: dict[int, Route] = {}
        self.subs: set[MqttSubscriber] = set()
        self._acks: dict[int, asyncio.Future[tuple[int, ...]]] = {}
        self._control = asyncio.Semaphore(_CONTROL_IDS)
        # A resumed session's queued messages arrive right behind the CONNACK, before the
        # application has subscribed again: kept here, unacknowledged, until a subscription
        # takes them (or resume_timeout passes).
        self.resumed = False
        self._orphans: deque[_Orphan] = deque()
        self._expiry: asyncio.TimerHandle | None = None

    # Subscribing -----------------------------------------------------------------------

    async def add(
        self, topic: str, deliver: Handler, queue: str | None, auto_ack: bool, qos: int, flow: Flow
    ) -> MqttSubscriber:
        mqtt_filter = f"$share/{queue}/{topic}" if queue else topic
        sub = MqttSubscriber(self._broker, topic, deliver, queue, auto_ack, mqtt_filter, flow)
        route = self.routes.get(mqtt_filter)
        if route is not None:
            route.subs.append(sub)
            self.subs.add(sub)
            return sub
        route = Route(mqtt_filter, topic, self._new_id(mqtt_filter), qos)
        route.subs.append(sub)
        # Registered before SUBSCRIBE: the first message may come right behind the SUBACK.
        self.routes[mqtt_filter] = route
        self.by_id[route.id] = route
        self.subs.add(sub)
        if self._orphans:
            self._adopt(route)
        try:
            codes = await self.send_subscribe(route)
        except BaseException:
            self._drop_route(route)
            await self._discard(sub)
            raise
        if not codes or codes[0] >= 0x80:
            self._drop_route(route)
            await self._discard(sub)
            code = codes[0] if codes else None
            hint = " (shared subscriptions need MQTT 5 or a server that supports them)"
            raise SubscribeError(
                f"the MQTT server refused the subscription to {mqtt_filter!r} "
                f"(reason code {code:#x}){hint if queue else ''}"
                if code is not None
                else f"the MQTT server refused the subscription to {mqtt_filter!r}"
            )
        return sub

    def _new_id(self, mqtt_filter: str) -> int:
        # From the filter, so that a process resuming its session finds the identifiers the
        # server kept for it on the same filters (a counter would give them to others).
        subscription_id = zlib.crc32(mqtt_filter.encode()) % _MAX_SUBSCRIPTION_ID + 1
        while subscription_id in self.by_id:
            subscription_id = subscription_id % _MAX_SUBSCRIPTION_ID + 1
        return subscription_id

    async def send_subscribe(self, route: Route) -> tuple[int, ...]:
        # At most _CONTROL_IDS SUBSCRIBE/UNSUBSCRIBE in flight: many subscriptions made at
        # once wait their turn for a packet id instead of running out of them.
        async with self._control:
            client = self._broker.client
            kwargs: dict[str, Any] = {}
            if self.settings.protocol == "5":
                kwargs["subscription_identifier"] = route.id
            mid = client.subscribe(gmqtt.Subscription(route.filter, qos=route.qos), **kwargs)
            return await self._wait_ack(mid, f"SUBACK for {route.filter!r}")

    async def send_unsubscribe(self, mqtt_filter: str) -> None:
        async with self._control:
            client = self._broker.client
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
        timeout = self.settings.publish_timeout
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise SubscribeError(f"no {what} from the MQTT server within {timeout}s") from None
        finally:
            self._acks.pop(mid, None)

    def acknowledged(self, mid: int, codes: tuple[int, ...]) -> None:
        """A SUBACK or UNSUBACK came."""
        future = self._acks.get(mid)
        if future is not None and not future.done():
            future.set_result(codes)

    def fail_waiting(self, error: BaseException) -> None:
        for future in self._acks.values():
            if not future.done():
                future.set_exception(error)
        self._acks.clear()

    async def resubscribe(self) -> None:
        """The server lost the session (expired, or restarted without persistence)."""
        for route in list(self.routes.values()):
            try:
                await self.send_subscribe(route)
            except Exception as exc:  # reported; the next reconnect tries again
                logger.warning("mqtt: resubscribing to %r failed: %s", route.filter, exc)

    # Unsubscribing ---------------------------------------------------------------------

    def _drop_route(self, route: Route) -> None:
        if self.routes.get(route.filter) is route:
            del self.routes[route.filter]
        self.by_id.pop(route.id, None)

    async def remove(self, sub: MqttSubscriber) -> None:
        """End ``sub``: what it had not handled goes to another local member of its group,
        or back to the server (unacknowledged: it is sent again when the session resumes)."""
        self.subs.discard(sub)
        route = self.routes.get(sub.filter)
        if route is not None and sub in route.subs:
            route.subs.remove(sub)
        left = await sub.stop()
        heirs = [other for other in route.subs if other.active] if route and route.shared else []
        for n, delivery in enumerate(left):
            if heirs:
                heir = heirs[n % len(heirs)]
                heir.push(delivery.moved_to(heir))
            else:
                delivery.hand_back()
        if route is None or route.subs:
            return
        self._drop_route(route)
        client = self._broker.client
        if self._broker.connected and client is not None and client.is_connected:
            await self.send_unsubscribe(route.filter)

    async def _discard(self, sub: MqttSubscriber) -> None:
        self.subs.discard(sub)
        for delivery in await sub.stop():
            delivery.hand_back()

    async def stop_all(self) -> None:
        """The broker disconnects: every subscription ends, what is left goes back."""
        subs = list(self.subs)
        self.subs.clear()
        self.routes.clear()
        self.by_id.clear()
        self._drop_orphans()
        for sub in subs:
            sub.end()
        for sub in subs:
            for delivery in await sub.stop():
                delivery.hand_back()

    # Where a message goes --------------------------------------------------------------

    def receivers(self, topic: str, ids: list[int] | None) -> list[MqttSubscriber]:
        """The local subscribers of a message: by its subscription identifiers (MQTT 5),
        or by matching its topic here (MQTT 3.1.1, or a server that leaves them out)."""
        if ids:
            by_id = self.by_id
            routes = [route for i in ids if (route := by_id.get(i)) is not None]
        else:
            routes = [route for route in self.routes.values() if route.matches(topic)]
        if len(routes) == 1:
            return routes[0].receivers()
        return [sub for route in routes for sub in route.receivers()]

    def keep_orphan(
        self, topic: str, payload: bytes, pairs: Pairs | None, entry: Inbound | None
    ) -> None:
        """Keep a message of the resumed session for the subscription it belongs to."""
        orphans = self._orphans
        loop = asyncio.get_running_loop()
        if len(orphans) >= self.settings.max_pending:
            dropped, _, _, old, _ = orphans.popleft()
            logger.warning(
                "mqtt: more than %d messages of the resumed session wait for a subscription; "
                "dropping the oldest (on %r)",
                self.settings.max_pending,
                dropped,
            )
            if old is not None:
                old.settle()
        orphans.append((topic, payload, pairs, entry, loop.time()))
        if self._expiry is None:
            self._expiry = loop.call_later(self.settings.resume_timeout, self._expire_orphans)

    def _adopt(self, route: Route) -> None:
        """Hand the new subscription what the resumed session delivered before it existed."""
        kept: deque[_Orphan] = deque()
        for orphan in self._orphans:
            topic, payload, pairs, entry, _ = orphan
            receivers = [sub for sub in route.receivers() if sub.active]
            if not receivers or not route.matches(topic):
                kept.append(orphan)
                continue
            if entry is None:
                for sub in receivers:
                    sub.push(MqttDelivery(sub, topic, payload, pairs))
            else:
                entry.waiting += len(receivers) - 1  # it waited as one
                for sub in receivers:
                    sub.push(AckedDelivery(sub, topic, payload, pairs, entry))
        self._orphans = kept

    def _expire_orphans(self) -> None:
        self._expiry = None
        loop = asyncio.get_running_loop()
        limit = loop.time() - self.settings.resume_timeout
        orphans = self._orphans
        expired: list[str] = []
        while orphans and orphans[0][4] <= limit:
            topic, _, _, entry, _ = orphans.popleft()
            expired.append(topic)
            if entry is not None:
                entry.settle()  # acknowledged: the server would send it again and again
        if expired:
            logger.warning(
                "mqtt: %d message(s) of the resumed session found no subscription within "
                "resume_timeout=%ss and were dropped (topics %s): the session has a "
                "subscription this process does not make; unsubscribe it, or start clean",
                len(expired),
                self.settings.resume_timeout,
                ", ".join(sorted(set(expired))[:5]),
            )
        if orphans:
            delay = max(0.0, orphans[0][4] - limit)
            self._expiry = loop.call_later(delay, self._expire_orphans)

    def _drop_orphans(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        self._orphans.clear()  # unacknowledged: the session keeps them

    async def join(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.gather(*(sub.join() for sub in list(self.subs)))
