"""Subscriptions on NATS: core subscriptions, JetStream push consumers, and request serving.

Each subscription has a :class:`~microbroker.transport.Mailbox` (its queue and
its one worker) that the connection's reader fills inline, and its overflow
rule is ``Overflow.REFUSE`` because nothing can hold the server back:

- core NATS delivers at most once: a message its full mailbox refuses is
  dropped, counted, and reported to the ``on_error`` hooks as a
  :class:`~microbroker_nats.SlowConsumer` (at once, then at most once a second
  with the counts since);
- JetStream's flow is bounded by the consumer's ``max_ack_pending``, and the
  mailbox holds at least that many, so it refuses only redeliveries piling up
  behind a stuck handler; a refused message is handed back (``-NAK`` with a
  backoff), counted and reported the same way, and delivered again: its
  redelivery does not count as an attempt of the retry policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from microbroker import InvalidTopic, Message, NotConnected, Subscriber
from microbroker.transport import (
    ERROR,
    EnvelopeError,
    Handler,
    Mailbox,
    Overflow,
    backoff,
    decode_envelope,
    report_error,
)

from ._client import (
    WRITE_DONE,
    WRITE_FALLBACK,
    WRITE_FORCE,
    FastClient,
    Headers,
    Item,
    round_trip,
)
from ._delivery import JetStreamDelivery, NatsDelivery, ack_tokens, nak
from .errors import SlowConsumer

if TYPE_CHECKING:
    from .broker import NatsBroker

logger = logging.getLogger("microbroker.broker.nats")

Responder = Callable[[NatsDelivery], Awaitable[Message | None]]
"""A request handler for :meth:`NatsBroker.serve`: returns the reply, or ``None`` for none."""

#: Seconds between two reports of one subscription's refused messages.
REPORT_INTERVAL = 1.0
# How long a refused JetStream message waits before the server offers it again.
_REFUSED_BACKOFF = 0.1
_REFUSED_BACKOFF_CAP = 5.0


class _Refusals:
    """The messages a subscription's full mailbox refused: counted, and reported rate-limited."""

    __slots__ = (
        "_last",
        "_timer",
        "capacity",
        "queue",
        "redelivered",
        "topic",
        "total",
        "unreported",
    )

    def __init__(self, topic: str, queue: str | None, capacity: int, redelivered: bool) -> None:
        self.topic = topic
        self.queue = queue
        self.capacity = capacity
        self.redelivered = redelivered
        self.total = 0
        self.unreported = 0
        self._last = float("-inf")
        self._timer: asyncio.TimerHandle | None = None

    def count(self) -> None:
        self.total += 1
        self.unreported += 1
        if self._timer is not None:
            return  # a report is due: it will count this one
        loop = asyncio.get_running_loop()
        wait = self._last + REPORT_INTERVAL - loop.time()
        if wait <= 0:
            self.report()
        else:
            self._timer = loop.call_later(wait, self.report)

    def report(self) -> None:
        self._timer = None
        if not self.unreported:
            return
        self._last = asyncio.get_running_loop().time()
        error = SlowConsumer(
            self.topic,
            self.queue,
            self.unreported,
            self.total,
            self.capacity,
            redelivered=self.redelivered,
        )
        self.unreported = 0
        report_error(error, None)

    def flush(self) -> None:
        """Report what is still unreported now (the subscription ends)."""
        timer = self._timer
        if timer is not None:
            timer.cancel()
            self.report()


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
        self._mailbox: Mailbox[Item] | None = None
        self._refusals: _Refusals | None = None
        self._closed = False
        self._nc: NATS | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        #: The JetStream stream and consumer this subscription reads, in JetStream mode.
        self.stream = stream
        self.consumer = consumer
        self._delete_consumer = delete_consumer
        # JetStream: times each message (by stream sequence) was refused, not to count as attempts.
        self._refused_seqs: dict[int, int] = {}

    @property
    def pending(self) -> int:
        """Messages received and not yet handed to the handler."""
        return len(self._mailbox) if self._mailbox is not None else 0

    @property
    def refused(self) -> int:
        """Messages the full mailbox refused since the subscription began (see the module)."""
        return self._refusals.total if self._refusals is not None else 0

    async def start(
        self,
        nc: NATS,
        subject: str,
        handle: Callable[[Item], Awaitable[None]],
        *,
        capacity: int,
        jetstream: bool,
    ) -> None:
        """Subscribe ``subject``; return once the server has the subscription."""
        self._nc = nc
        queue = self.queue or ""
        mailbox = self._mailbox = Mailbox(
            handle,
            capacity=capacity,
            overflow=Overflow.REFUSE,
            name=f"nats subscription to {self.topic!r}",
        )
        self._refusals = _Refusals(self.topic, self.queue, capacity, jetstream)
        refused = self._hand_back if jetstream else self._drop
        offer = mailbox.offer
        try:
            if isinstance(nc, FastClient):
                self._sub = await nc.subscribe_sink(subject, queue, offer, refused)
            else:

                async def callback(msg: Msg) -> None:
                    item = (msg.subject, msg.reply, msg.data, msg.headers)
                    if not offer(item):
                        refused(item)

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
            await mailbox.close()
            if isinstance(exc, nats.errors.BadSubjectError):
                raise InvalidTopic(
                    f"{subject!r} (queue {self.queue!r}) is not a valid NATS subject and queue"
                ) from exc
            if isinstance(exc, nats.errors.Error):
                raise NotConnected(f"cannot subscribe to {subject!r}: {exc}") from exc
            raise

    # Refused messages -----------------------------------------------------------------

    def _drop(self, item: Item) -> None:
        """Core NATS: the message is lost (at most once), and that is reported."""
        assert self._refusals is not None
        self._refusals.count()

    def _hand_back(self, item: Item) -> None:
        """JetStream: the server delivers the message again after a backoff."""
        refusals = self._refusals
        assert refusals is not None
        reply = item[1]
        if reply:
            _, seq = ack_tokens(reply)
            seqs = self._refused_seqs
            times = seqs[seq] = seqs.get(seq, 0) + 1
            if len(seqs) > 4 * refusals.capacity:  # delivered elsewhere since: forget them
                seqs.clear()
            self._tell_soon(reply, nak(backoff(times, _REFUSED_BACKOFF, cap=_REFUSED_BACKOFF_CAP)))
        refusals.count()

    def _tell_soon(self, subject: str, payload: bytes) -> None:
        """Publish from the reader (no await): written now, the flusher woken by a task."""
        nc = self._nc
        assert nc is not None
        if type(nc) is FastClient:
            try:
                state = nc.write_publish(subject, payload, None)
            except nats.errors.Error:
                return  # the server delivers it again after ack_wait
            if state in (WRITE_DONE, WRITE_FALLBACK):
                return  # (disconnected: again after ack_wait)
            self._spawn(nc.kick(state == WRITE_FORCE))
        else:
            self._spawn(nc.publish(subject, payload))

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.debug("nats: handing a refused message back failed: %r", task.exception())

    def attempt(self, reply: str) -> int:
        """The delivery count of a JetStream message, less the times this mailbox refused it."""
        delivered, seq = ack_tokens(reply)
        seqs = self._refused_seqs
        if seqs:
            delivered -= seqs.pop(seq, 0)
        return delivered if delivered > 1 else 1

    # Ending ---------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        return not self._closed and self._broker.connected

    async def unsubscribe(self) -> None:
        """Stop the subscription after handling what the server already sent to it.

        A queue group's JetStream consumer is durable and stays on the server for
        the group's next member; a broadcast subscription's consumer is deleted.
        A handler still busy after ``drain_timeout`` seconds is cancelled.
        Messages left unhandled (an unsubscribe from inside the handler, or
        after that timeout) go back to the server in JetStream mode; core NATS
        cannot take them back.
        """
        if self._closed:
            return
        self._closed = True
        self._broker._subs.discard(self)
        sub, mailbox = self._sub, self._mailbox
        if sub is not None and mailbox is not None:
            in_handler = asyncio.current_task() is mailbox.task
            await _drain(sub, in_handler)
            if not in_handler:
                await self._finish(mailbox)
            conn = sub._conn
            if isinstance(conn, FastClient):
                conn.release_sink(sub)
            left = await mailbox.close()
            if left:
                await self._leave(left)
        if self._refusals is not None:
            self._refusals.flush()
        streams = self._broker._streams
        if self._delete_consumer and streams is not None and self.stream and self.consumer:
            await streams.delete_consumer(self.stream, self.consumer)

    async def _finish(self, mailbox: Mailbox[Item]) -> None:
        """Let the handler take what is queued, for up to ``drain_timeout`` seconds."""
        timeout = self._broker.settings.drain_timeout
        try:
            await asyncio.wait_for(mailbox.join(), timeout)
        except TimeoutError:
            logger.warning(
                "nats: the handler of %r did not finish within drain_timeout (%ss): "
                "cancelled, with %d message(s) still queued",
                self.topic,
                timeout,
                len(mailbox),
            )
            mailbox.task.cancel()

    async def _leave(self, left: list[Item]) -> None:
        if self.stream is None:
            logger.info(
                "nats: %d message(s) on %r received before unsubscribe() were not handled",
                len(left),
                self.topic,
            )
            return
        nc = self._nc
        assert nc is not None
        for _, reply, _, _ in left:
            if reply:
                with contextlib.suppress(nats.errors.Error):
                    await nc.publish(reply, nak(0))


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
        logger.debug("nats: unsubscribing from %s: %s", sub.subject, exc)
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()


# Making subscriptions -------------------------------------------------------------------


async def subscribe_core(
    broker: NatsBroker, nc: NATS, topic: str, deliver: Handler, queue: str | None, auto_ack: bool
) -> NatsSubscriber:
    """A core NATS subscription (at most once) delivering to ``deliver``."""
    sub = NatsSubscriber(broker, topic, queue, auto_ack)

    if broker.settings.uses_envelope:

        def handle(item: Item) -> Awaitable[None]:
            subject, reply, data, headers = item
            data, headers = _unwrap(data, headers)
            return deliver(NatsDelivery(subject, data, headers, queue, reply, nc))

    else:

        def handle(item: Item) -> Awaitable[None]:
            # Not a coroutine of its own: the mailbox awaits the dispatcher's directly.
            subject, reply, data, headers = item
            return deliver(NatsDelivery(subject, data, headers, queue, reply, nc))

    await sub.start(nc, topic, handle, capacity=broker.settings.max_pending, jetstream=False)
    return sub


async def subscribe_jetstream(
    broker: NatsBroker,
    nc: NATS,
    topic: str,
    deliver: Handler,
    queue: str | None,
    auto_ack: bool,
    durable: str | None,
) -> NatsSubscriber:
    """A subscription reading a JetStream push consumer (at least once)."""
    streams = broker._streams
    assert streams is not None
    settings = broker.settings
    stream, config = await streams.consumer(topic, queue, durable)
    sub = NatsSubscriber(
        broker,
        topic,
        queue,
        auto_ack,
        stream=stream,
        consumer=config.durable_name,
        delete_consumer=queue is None and durable is None,
    )
    envelope = settings.uses_envelope
    attempt = sub.attempt

    async def handle(item: Item) -> None:
        subject, reply, data, headers = item
        if not reply:  # a status message, not a stored one
            return
        if envelope:
            data, headers = _unwrap(data, headers)
        await deliver(JetStreamDelivery(subject, data, headers, queue, reply, nc, attempt(reply)))

    # The flow is bounded by max_ack_pending: the mailbox holds at least that many.
    capacity = max(settings.max_pending, settings.max_ack_pending)
    assert config.deliver_subject is not None
    await sub.start(nc, config.deliver_subject, handle, capacity=capacity, jetstream=True)
    return sub


async def serve(
    broker: NatsBroker, nc: NATS, topic: str, responder: Responder, queue: str | None
) -> NatsSubscriber:
    """Answer requests on ``topic`` with ``responder`` (see :meth:`NatsBroker.serve`)."""
    sub = NatsSubscriber(broker, topic, queue, True)
    # Requests carry NATS headers; plain publishes to the topic (RPC stream frames) may
    # come in the envelope.
    envelope = broker.settings.uses_envelope

    async def on_request(item: Item) -> None:
        subject, reply, data, headers = item
        if envelope:
            data, headers = _unwrap(data, headers)
        delivery = NatsDelivery(subject, data, headers, queue, reply, nc)
        try:
            answer = await responder(delivery)
        except Exception as exc:
            report_error(exc, delivery)
            if reply:
                error = " ".join(f"{type(exc).__name__}: {exc}".split())
                with contextlib.suppress(Exception):
                    await delivery.respond(Message(b"", {ERROR: error}))
            return
        if answer is not None and reply:
            await delivery.respond(answer)

    await sub.start(nc, topic, on_request, capacity=broker.settings.max_pending, jetstream=False)
    return sub


def _unwrap(data: bytes, headers: Headers) -> tuple[bytes, Headers]:
    """The body and headers of go-micro's envelope; anything else as it came."""
    if data[:1] != b"{":
        return data, headers
    try:
        envelope_headers, body = decode_envelope(data)
    except EnvelopeError:
        return data, headers
    return body, envelope_headers
