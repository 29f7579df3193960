"""Deliveries from MQTT, and the acknowledgements that follow their settlement.

A QoS 1/2 PUBLISH is acknowledged to the server (PUBACK; PUBREC for QoS 2)
only once every local delivery of it is settled: acked, or given up after its
dead letter was published. A process that dies before that leaves the message
unacknowledged in its session, and the server sends it again when the session
resumes (MQTT-4.4.0-1): at least once across a subscriber crash.

MQTT 5 and 3.1.1 both require the acknowledgements in the order the PUBLISH
packets were received (MQTT-4.6.0-2, MQTT-4.6.0-3), so :class:`Acks` keeps
them in that order and sends each as soon as every one before it was sent. A
message *handed back* (the subscription ended before it was handled, or a
server stopping released it) is not acknowledged at all: the server sends it
again when the session resumes; the acknowledgements after it still go out.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from microbroker import Message
from microbroker.transport import Delivery

from ._envelope import Pairs, content_type, decode

if TYPE_CHECKING:
    from ._subscribing import MqttSubscriber

_PUBACK = 0x40
_PUBREC = 0x50


def ack_packet(mid: int, qos: int, mqtt5: bool) -> bytes:
    """The PUBACK (QoS 1) or PUBREC (QoS 2) of ``mid``, as gmqtt writes it (reason "success")."""
    cmd = _PUBACK if qos == 1 else _PUBREC
    if mqtt5:
        return bytes((cmd, 4, mid >> 8, mid & 0xFF, 0, 0))
    return bytes((cmd, 2, mid >> 8, mid & 0xFF))


def _nowhere(data: bytes) -> None:
    """The writer before the first connection (nothing is received before it)."""


class Inbound:
    """One QoS 1/2 PUBLISH received, waiting for its local deliveries to settle."""

    __slots__ = ("acks", "mid", "qos", "released", "topic", "waiting")

    def __init__(self, acks: Acks | None, mid: int, qos: int, topic: str, waiting: int) -> None:
        #: The connection's acknowledgements, or ``None`` once that connection was lost.
        self.acks = acks
        self.mid = mid
        self.qos = qos
        self.topic = topic
        #: Local deliveries not settled yet (a redelivery keeps its place).
        self.waiting = waiting
        #: A delivery was handed back: the server is to send it again, so no acknowledgement.
        self.released = False

    def settle(self) -> None:
        """One of its deliveries was acked or given up."""
        self.waiting -= 1
        if self.waiting <= 0:
            acks = self.acks
            if acks is not None:
                acks.advance()

    def release(self) -> None:
        """One of its deliveries was handed back undelivered."""
        self.released = True
        self.settle()


class Acks:
    """The acknowledgements of received QoS 1/2 messages, sent in the order they came.

    ``write`` sends bytes on the live connection. When the connection is lost
    the messages not acknowledged yet become :attr:`stale`: the server sends
    them again (with DUP set and the same packet id) once the session resumes,
    and :meth:`take_back` recognises those, so that a message still queued or
    in a handler here is not delivered a second time.
    """

    __slots__ = ("mqtt5", "queue", "recorded", "stale", "write")

    def __init__(self, mqtt5: bool) -> None:
        #: The messages not acknowledged yet, in the order they came.
        self.queue: deque[Inbound] = deque()
        #: Sends bytes on the live connection (set on each CONNACK).
        self.write: Callable[[bytes], None] = _nowhere
        self.mqtt5 = mqtt5
        #: Messages received on a lost connection and not acknowledged, by packet id.
        self.stale: dict[int, Inbound] = {}
        #: QoS 2 messages acknowledged (PUBREC) whose PUBREL has not come: a PUBLISH with
        #: one of these ids is the same message again, acknowledged once more and not
        #: delivered (MQTT-4.3.3-10).
        self.recorded: set[int] = set()

    def __len__(self) -> int:
        return len(self.queue)

    def received(self, mid: int, qos: int, topic: str, waiting: int) -> Inbound:
        """A PUBLISH came, for ``waiting`` local deliveries (0: acknowledged at once, in turn)."""
        entry = Inbound(self, mid, qos, topic, waiting)
        self.queue.append(entry)
        if waiting <= 0:
            self.advance()
        return entry

    def advance(self) -> None:
        """Send the acknowledgements that are due, in order: stop at the first unsettled."""
        queue = self.queue
        if not queue:
            return
        entry = queue[0]
        if entry.waiting > 0:
            return
        if len(queue) == 1 or queue[1].waiting > 0:  # the usual case: one is due
            queue.popleft()
            if not entry.released:
                mid = entry.mid
                if entry.qos == 2:
                    self.recorded.add(mid)
                    cmd = _PUBREC
                else:
                    cmd = _PUBACK
                if self.mqtt5:
                    self.write(bytes((cmd, 4, mid >> 8, mid & 0xFF, 0, 0)))
                else:
                    self.write(bytes((cmd, 2, mid >> 8, mid & 0xFF)))
            return
        mqtt5 = self.mqtt5
        out: bytes | bytearray = b""
        while queue and queue[0].waiting <= 0:
            entry = queue.popleft()
            if entry.released:
                continue
            if entry.qos == 2:
                self.recorded.add(entry.mid)
            packet = ack_packet(entry.mid, entry.qos, mqtt5)
            if out:
                if type(out) is bytes:
                    out = bytearray(out)
                out += packet
            else:
                out = packet
        if out:
            self.write(bytes(out))

    def take_back(self, mid: int, topic: str, dup: bool) -> bool:
        """Whether a PUBLISH is a stale message of ours, sent again; if so it is ours again."""
        entry = self.stale.pop(mid, None)
        if entry is None:
            return False
        if not dup or entry.topic != topic:
            # Not the same message: the server let the old one go (its id is free again).
            entry.acks = None
            return False
        entry.acks = self
        self.queue.append(entry)
        if entry.waiting <= 0:
            self.advance()
        return True

    def lost(self) -> None:
        """The connection was lost: what is not acknowledged yet becomes stale."""
        stale = self.stale
        for entry in self.queue:
            entry.acks = None
            if not entry.released:
                stale[entry.mid] = entry
        self.queue.clear()

    def released(self, mid: int) -> None:
        """The server released a QoS 2 message (PUBREL): its id may come again, as another."""
        self.recorded.discard(mid)

    def forget(self) -> None:
        """The server has no session for us: it will not send the stale ones again."""
        for entry in self.stale.values():
            entry.acks = None
        self.stale.clear()
        self.recorded.clear()

    def abandon(self) -> None:
        """The broker disconnects: nothing more is acknowledged (the session keeps the rest)."""
        self.lost()
        self.forget()


class MqttDelivery(Delivery):
    """A delivery from MQTT at QoS 0: nothing to acknowledge.

    The message is built from the PUBLISH the first time :attr:`message` is
    read (each delivery of a fanned-out message gets its own, to change as it
    likes); :attr:`body` and :attr:`content_type` are answered without it.
    A nack delivers it again, here, after the retry policy's backoff.
    """

    __slots__ = ("_pairs", "_payload", "_sub")

    acks_locally = True

    def __init__(
        self,
        sub: MqttSubscriber,
        topic: str,
        payload: bytes,
        pairs: Pairs | None,
        attempt: int = 1,
    ) -> None:
        super().__init__(topic, None, queue=sub.queue, attempt=attempt)
        self._sub = sub
        self._payload = payload
        self._pairs = pairs

    def load_message(self) -> Message:
        return decode(self._payload, self._pairs, self._sub.enveloped)

    @property
    def body(self) -> bytes:
        message = self._message
        if message is None:
            if not self._sub.enveloped:
                return self._payload
            message = self.message
        return message.body

    @property
    def content_type(self) -> str | None:
        if self._message is None and not self._sub.enveloped:
            return content_type(self._pairs)
        return self.message.header("Content-Type")

    async def on_nack(self, delay: float) -> None:
        self._sub.redeliver(self, delay)

    def again(self) -> MqttDelivery:
        """The next attempt at this message (same PUBLISH, attempt + 1)."""
        return self.moved_to(self._sub, self.attempt + 1)

    def moved_to(self, sub: MqttSubscriber, attempt: int | None = None) -> MqttDelivery:
        """This message, delivered to ``sub`` instead (a member of the same group)."""
        attempt = self.attempt if attempt is None else attempt
        return MqttDelivery(sub, self.topic, self._payload, self._pairs, attempt)

    def hand_back(self) -> None:
        """It will not be handled here (the subscription ended first)."""


class AckedDelivery(MqttDelivery):
    """A delivery from MQTT at QoS 1 or 2: its settlement acknowledges the PUBLISH.

    - ``ack`` acknowledges it (once every local delivery of it is settled);
    - ``nack`` (a failed attempt) delivers it again here after the backoff,
      still unacknowledged: if the process dies meanwhile, the server resends
      it when the session resumes;
    - given up (the retry policy's last attempt failed, its dead letter
      published) it is acknowledged, so that the server forgets it.
    """

    __slots__ = ("_entry",)

    acks_locally = False

    def __init__(
        self,
        sub: MqttSubscriber,
        topic: str,
        payload: bytes,
        pairs: Pairs | None,
        entry: Inbound,
        attempt: int = 1,
    ) -> None:
        # Delivery's own __init__ directly: this runs once per message.
        Delivery.__init__(self, topic, None, queue=sub.queue, attempt=attempt)
        self._sub = sub
        self._payload = payload
        self._pairs = pairs
        self._entry = entry

    async def on_ack(self) -> None:
        entry = self._entry  # Inbound.settle, inlined: this runs once per message
        entry.waiting -= 1
        if entry.waiting <= 0:
            acks = entry.acks
            if acks is not None:
                acks.advance()

    def moved_to(self, sub: MqttSubscriber, attempt: int | None = None) -> AckedDelivery:
        attempt = self.attempt if attempt is None else attempt
        return AckedDelivery(sub, self.topic, self._payload, self._pairs, self._entry, attempt)

    def hand_back(self) -> None:
        self._entry.release()
