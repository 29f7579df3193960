"""Publishing: PUBLISH packets built here, and the in-flight window of QoS 1/2 publishes.

A QoS 1/2 publish stays in gmqtt's store (:class:`Inflight`) until the server
acknowledges it (PUBACK; PUBREC for QoS 2), and gmqtt resends what is left
there after a reconnect. That store is also the window: at most ``window``
publishes are unacknowledged, later ones wait their turn in the order they
were made, one for each acknowledgement.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from gmqtt.storage import PersistentStorage  # type: ignore[import-untyped]

from microbroker import InvalidTopic, Message, NotConnected, PublishError

from ._envelope import encoded_topic, envelope, user_properties, vbi, vbi_size
from .options import MqttOptions, check_qos

logger = logging.getLogger("microbroker.broker.mqtt")

#: Packet ids left for SUBSCRIBE/UNSUBSCRIBE when publishes fill the server's window.
CONTROL_IDS = 4


class Inflight(PersistentStorage):  # type: ignore[misc]
    """gmqtt's store of unacknowledged QoS 1/2 publishes, which is also the publish window.

    gmqtt pushes each QoS 1/2 packet here when it sends it, removes it on
    PUBACK/PUBCOMP and replays what is left after a reconnect. Watching it gives
    the broker flow control and ``confirm=True`` without a second bookkeeping.
    """

    def __init__(self, released: Callable[[], None]) -> None:
        super().__init__()
        self._released = released
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
        self._released()

    def clear(self) -> None:
        if self._messages:
            # gmqtt clears the store when the server says it has no session for us.
            logger.warning(
                "mqtt: the server did not keep the session; %d unacknowledged publishes are lost",
                len(self._messages),
            )
        super().clear()
        self.fail("the MQTT server lost the session before acknowledging the publish")
        self._released()

    def fail(self, reason: str) -> None:
        """Fail every ``confirm=True`` publish still waiting, with ``reason``."""
        waiters, self._waiters = self._waiters, {}
        for waiter in waiters.values():
            if not waiter.done():
                waiter.set_exception(PublishError(reason))


class Publisher:
    """The publishing half of one broker: checks, packets, the window and its waiting line."""

    def __init__(self, settings: MqttOptions, progress: Callable[[], None]) -> None:
        self.settings = settings
        self.enveloped = settings.uses_envelope
        self.mqtt5 = settings.protocol == "5"
        self.inflight = Inflight(self._released)
        self.window = settings.max_inflight
        self.client: Any = None
        self.open = False
        self._progress = progress
        # Publishes waiting for room in the window, first come first served: an
        # acknowledgement wakes one of them, not all (waking every waiter on every PUBACK
        # made N concurrent publishes cost O(N) wake-ups each). _granted counts the waiters
        # woken with a slot that have not sent yet.
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._granted = 0

    def server_window(self, receive_maximum: int | None) -> None:
        """The server announced its Receive Maximum (``None``: it announced none)."""
        if receive_maximum:
            self.window = max(1, min(self.settings.max_inflight, receive_maximum - CONTROL_IDS))
        self.grant_room()

    async def send(
        self,
        topic: str,
        message: Message,
        qos: int | None = None,
        retain: bool = False,
        confirm: bool = False,
    ) -> None:
        """Publish ``message`` (checked by ``Broker.publish`` already) on ``topic``."""
        if "+" in topic or "#" in topic:
            raise InvalidTopic(f"MQTT cannot publish to a topic with wildcards: {topic!r}")
        if topic.startswith("$"):
            raise InvalidTopic(f"MQTT topics starting with '$' are reserved: {topic!r}")
        if len(topic) > 16383 and len(topic.encode()) > 65535:
            raise InvalidTopic("an MQTT topic is at most 65535 bytes of UTF-8")
        qos = self.settings.qos if qos is None else check_qos(qos)
        body = message.body
        if type(body) is not bytes:
            body = bytes(body)
        headers = message.headers
        if self.enveloped:
            body = envelope(headers, body)
            properties = b""
        elif headers:
            properties = user_properties(headers)
        else:
            properties = b""
        if not self.open:  # disconnected while the publish was on its way here
            raise NotConnected("the mqtt broker is not connected")
        if qos == 0:
            self._write_publish(topic, body, properties, 0, retain)
            return
        inflight = self.inflight
        if self._waiters or inflight.count + self._granted >= self.window:
            await self._wait_for_room()
        waiter: asyncio.Future[None] | None = None
        if confirm:
            waiter = asyncio.get_running_loop().create_future()
            inflight.next_waiter = waiter
        try:
            self._write_publish(topic, body, properties, qos, retain)
        except OverflowError as exc:  # no packet id left: the server's window is full
            self.grant_room()  # the slot this publish had goes to the next in line
            raise PublishError(f"no MQTT packet id free for the publish: {exc}") from None
        finally:
            inflight.next_waiter = None
        if waiter is not None:
            timeout = self.settings.publish_timeout
            try:
                await asyncio.wait_for(asyncio.shield(waiter), timeout)
            except TimeoutError:
                raise PublishError(
                    f"the MQTT server did not acknowledge the publish on {topic!r} within "
                    f"{timeout}s; it is kept and resent on reconnect"
                ) from None

    def _write_publish(
        self, topic: str, body: bytes, properties: bytes, qos: int, retain: bool
    ) -> None:
        """gmqtt's ``Client.publish``, with the packet built here (the same bytes, less work)."""
        client = self.client
        protocol = client._connection._protocol
        topic_bytes = encoded_topic(topic)
        mqtt5 = self.mqtt5
        length = len(topic_bytes) + len(body)
        if mqtt5:
            length += vbi_size(len(properties)) + len(properties)
        if qos:
            length += 2
            mid = protocol.id_generator.next_id()
        packet = bytearray((0x30 | (qos << 1) | (1 if retain else 0),))
        packet += vbi(length)
        packet += topic_bytes
        if qos:
            packet += mid.to_bytes(2, "big")
        if mqtt5:
            packet += vbi(len(properties))
            packet += properties
        packet += body
        protocol.write_data(packet)
        if qos:
            client._persistent_storage.push_message(mid, packet)

    async def _wait_for_room(self) -> None:
        """Wait for a slot in the window, in turn: returns holding one, which the caller
        uses at once (no ``await`` between this and ``_write_publish``)."""
        loop = asyncio.get_running_loop()
        turn: asyncio.Future[None] = loop.create_future()
        self._waiters.append(turn)
        self.grant_room()  # a slot may be free already (waiters ahead gave up)
        timeout = self.settings.publish_timeout
        expiry = loop.call_later(timeout, self._expire, turn, timeout)
        try:
            await turn
        except BaseException:
            # Timed out, cancelled or disconnected. A slot granted just before that (the
            # task had not run yet) is handed on, or the window would shrink for good.
            if turn.done() and not turn.cancelled() and turn.exception() is None:
                self._granted -= 1
                self.grant_room()
            raise
        finally:
            expiry.cancel()
        self._granted -= 1
        if not self.open:
            raise NotConnected("the mqtt broker was disconnected while the publish waited")

    def _expire(self, turn: asyncio.Future[None], timeout: float) -> None:
        # The future stays in the queue (removing it is O(n)); grant_room skips it.
        if not turn.done():
            turn.set_exception(
                PublishError(
                    f"no room in the in-flight window within {timeout}s: "
                    f"{self.inflight.count} publishes wait for the MQTT server's "
                    "acknowledgement. Is the server reachable? (publish_timeout, "
                    "max_inflight; the server's Receive Maximum also bounds the window)"
                )
            )

    def grant_room(self) -> None:
        """Wake the first waiting publishes, one for each free slot of the window."""
        waiters = self._waiters
        free = self.window - self.inflight.count - self._granted
        while free > 0 and waiters:
            turn = waiters.popleft()
            if turn.done():  # timed out or cancelled while waiting
                continue
            turn.set_result(None)
            self._granted += 1
            free -= 1

    def close(self) -> None:
        """Publishes waiting for room see the broker closed."""
        self.open = False
        waiters, self._waiters = self._waiters, deque()
        for turn in waiters:
            if not turn.done():
                turn.set_exception(
                    NotConnected("the mqtt broker was disconnected while the publish waited")
                )

    def _released(self) -> None:
        if self._waiters:
            self.grant_room()
        self._progress()
