"""The conformance cases. A broker plugin's test module subclasses :class:`BrokerConformance`."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from google.protobuf import wrappers_pb2

from .._broker import Broker
from .._context import Context
from .._delivery import Delivery
from .._errors import (
    DecodeError,
    GivenUp,
    InvalidHeader,
    MessageTooLarge,
    MicrobrokerError,
    NotConnected,
)
from .._headers import ATTEMPTS, ERROR, ID, ORIGINAL_ID, ORIGINAL_TOPIC, header_size
from .._markers import hookimpl
from .._message import Message
from .._plugins import register_plugin, unregister_plugin
from .._retry import DEFAULT_RETRY, RetryPolicy
from .._service import Service
from ._harness import BrokerFactory, ErrorCatcher, Harness, Inbox, RestartServer, gather_limited
from ._rpc_cases import RpcConformance

Case = Callable[[Harness], Coroutine[Any, Any, None]]

#: Body sizes of the round trip, each capped by the broker's declared ``max_message_size``;
#: the largest message the broker declares is sent too.
BODY_SIZES = (0, 1, 127, 1024, 64 * 1024, 1024 * 1024)
HEADERS = {
    "X-Plain": "value",
    "X-Empty": "",
    "X-Spaces": "a value with spaces",
    "X-Unicode": "héllo wörld ✓",
    "X-Symbols": "k=v;a,b:c/d?e&f#g",
}


#: The smallest ``max_message_size`` a broker may declare: room for the headers a typed
#: Event or an RPC request carries (a few hundred bytes) and a small body.
MIN_MESSAGE_SIZE = 1024
#: The smallest ``max_headers`` and ``max_header_bytes`` a broker may declare: room for the
#: headers of a typed Event, an RPC request and a dead letter.
MIN_HEADERS = 32
MIN_HEADER_BYTES = 1024


def _body_sizes(limit: int | None) -> list[int]:
    """The round trip's body sizes: those that fit within ``limit`` with the case's headers,
    then the one that makes a message of exactly ``limit`` bytes."""
    if limit is None:
        return list(BODY_SIZES)
    sizes = [n for n in BODY_SIZES if n + _headers_for(n) <= limit]
    exact = limit - _headers_for(limit)
    while exact + _headers_for(exact) > limit:
        exact -= 1
    if exact >= 0 and exact not in sizes:
        sizes.append(exact)
    return sizes


def _headers_for(size: int) -> int:
    return header_size({**HEADERS, "X-Size": str(size)})


def _need(condition: bool, capability: str) -> None:
    if not condition:
        pytest.skip(f"the broker does not declare {capability}")


def _is_connected(broker: Broker) -> bool:
    # A function, so that type checkers do not narrow the property across awaits.
    return broker.connected


class BrokerConformance(RpcConformance):
    """The conformance suite. Subclass it in a test module and provide ``broker_factory``.

    ``broker_factory`` is a fixture returning a zero-argument callable that
    makes a new, unconnected broker. ``restart_server`` (optional) returns a
    callable, sync or async, that restarts the server on the same address;
    without it the restart case is skipped. Class attributes tune the waits.

    The suite adapts to ``broker.capabilities``: a case for a capability the
    broker does not declare is skipped, and one it declares is held to.
    """

    #: Seconds a message may take to arrive.
    delivery_timeout: float = 10.0
    #: Seconds of silence after which no further delivery is expected.
    quiet_period: float = 0.5
    #: Seconds one case may take in all.
    case_timeout: float = 120.0
    #: Messages in the no-loss case.
    bulk_messages: int = 10_000

    @pytest.fixture
    def restart_server(self) -> RestartServer | None:
        """Override to return a callable that restarts the server (sync or async)."""
        return None

    @pytest.fixture
    def conformance(
        self, broker_factory: BrokerFactory, restart_server: RestartServer | None
    ) -> Harness:
        return Harness(
            broker_factory,
            restart_server,
            timeout=self.delivery_timeout,
            quiet=self.quiet_period,
        )

    def _run(self, harness: Harness, case: Case) -> None:
        harness.run(case, self.case_timeout)

    # The cases ------------------------------------------------------------------

    def test_declares_capabilities(self, conformance: Harness) -> None:
        """The broker says what it promises, and its name.

        A ``max_message_size`` is a promise like the others: the suite sends
        messages up to it, and no larger, so any honest limit passes; it must
        leave room for the headers every typed message carries.
        """
        broker = conformance.new_broker()
        caps = broker.capabilities
        assert caps.max_message_size is None or caps.max_message_size >= MIN_MESSAGE_SIZE, (
            f"max_message_size={caps.max_message_size}: a broker must carry at least "
            f"{MIN_MESSAGE_SIZE} bytes (the headers of a typed message and a small body)"
        )
        assert caps.max_headers is None or caps.max_headers >= MIN_HEADERS, (
            f"max_headers={caps.max_headers}: a broker must carry at least {MIN_HEADERS} "
            "headers (a dead letter carries the original's and five more)"
        )
        assert caps.max_header_bytes is None or caps.max_header_bytes >= MIN_HEADER_BYTES, (
            f"max_header_bytes={caps.max_header_bytes}: a broker must carry at least "
            f"{MIN_HEADER_BYTES} bytes of headers"
        )
        assert isinstance(str(broker), str)
        assert str(broker)
        assert not broker.connected, "a new broker must not be connected before connect()"

    def test_round_trip_headers_and_binary_bodies(self, conformance: Harness) -> None:
        """Bodies of 0 bytes up to 1 MiB or the declared limit, every byte value, and headers
        arrive intact; so does a message of exactly ``max_message_size`` (headers included)."""

        async def case(h: Harness) -> None:
            pub, sub = await h.broker(), await h.broker()
            topic = h.topic("roundtrip")
            inbox = Inbox()
            await sub.subscribe(topic, inbox)
            await h.settle()
            rng = random.Random(42)
            sent = []
            for size in _body_sizes(h.capabilities.max_message_size):
                body = bytes(range(256)) * (size // 256) + rng.randbytes(size % 256)
                headers = {**HEADERS, "X-Size": str(size)}
                sent.append((body, headers))
                await pub.publish(topic, Message(body, dict(headers)))
            await inbox.wait_for(len(sent), h.timeout * 2)
            by_size = {d.message.header("X-Size"): d for d in inbox.deliveries}
            for body, headers in sent:
                delivery = by_size.get(headers["X-Size"])
                assert delivery is not None, f"the {len(body)}-byte message did not arrive"
                assert delivery.topic == topic
                assert delivery.message.body == body, f"the {len(body)}-byte body changed"
                for key, value in headers.items():
                    assert delivery.message.header(key) == value, f"header {key} lost or changed"

        self._run(conformance, case)

    def test_many_topics_at_once(self, conformance: Harness) -> None:
        """Twenty topics at once: each subscriber gets its own topic's messages and no other."""

        async def case(h: Harness) -> None:
            pub, sub = await h.broker(), await h.broker()
            topics = [h.topic(f"many{i}") for i in range(20)]
            inboxes = {t: Inbox(t) for t in topics}
            for topic in topics:
                await sub.subscribe(topic, inboxes[topic])
            await h.settle()
            await asyncio.gather(
                *(
                    pub.publish(topic, Message(f"{topic}:{n}".encode()))
                    for topic in topics
                    for n in range(5)
                )
            )
            for inbox in inboxes.values():
                await inbox.wait_for(5, h.timeout)
            await asyncio.sleep(h.quiet)
            for topic, inbox in inboxes.items():
                expected = {f"{topic}:{n}".encode() for n in range(5)}
                assert set(inbox.bodies) == expected, f"{topic} got another topic's messages"
                assert len(inbox) == 5, f"{topic} got {len(inbox)} deliveries for 5 messages"

        self._run(conformance, case)

    def test_broadcast_every_subscriber_gets_every_message(self, conformance: Harness) -> None:
        async def case(h: Harness) -> None:
            pub = await h.broker()
            topic = h.topic("broadcast")
            inboxes = [Inbox(f"subscriber {i}") for i in range(3)]
            for inbox in inboxes:
                await (await h.broker()).subscribe(topic, inbox)
            await h.settle()
            for n in range(20):
                await pub.publish(topic, Message(str(n).encode()))
            expected = sorted(str(n).encode() for n in range(20))
            for inbox in inboxes:
                await inbox.wait_for(20, h.timeout)
            await asyncio.sleep(h.quiet)
            for inbox in inboxes:
                assert sorted(set(inbox.bodies)) == expected, f"{inbox.name} missed messages"

        self._run(conformance, case)

    def test_queue_group_delivers_each_message_to_one_member(self, conformance: Harness) -> None:
        """Each message to exactly one member of the group; every member gets some."""
        _need(conformance.capabilities.queue_groups, "queue_groups")

        async def case(h: Harness) -> None:
            pub = await h.broker()
            topic = h.topic("queue")
            members = [Inbox(f"member {i}") for i in range(3)]
            for member in members:
                await (await h.broker()).subscribe(topic, member, queue="workers")
            bystander = Inbox("broadcast subscriber")
            await (await h.broker()).subscribe(topic, bystander)
            await h.settle()
            total = 90
            for n in range(total):
                await pub.publish(topic, Message(str(n).encode()))
            await bystander.wait_for(total, h.timeout)
            await Inbox("group").wait_until(
                lambda: len({b for m in members for b in m.bodies}) >= total,
                h.timeout,
                "delivery of every message to the group",
            )
            await asyncio.sleep(h.quiet)
            owners: dict[bytes, set[str]] = {}
            for member in members:
                for body in member.bodies:
                    owners.setdefault(body, set()).add(member.name)
            assert len(owners) == total, f"the group received {len(owners)} of {total} messages"
            shared = {body: names for body, names in owners.items() if len(names) > 1}
            assert not shared, f"messages went to more than one member: {shared}"
            for member in members:
                assert member.deliveries, f"{member.name} got no message: the load is not spread"

        self._run(conformance, case)

    def test_queue_group_members_on_one_connection_share_the_messages(
        self, conformance: Harness
    ) -> None:
        """Members subscribed through one broker (one process, one connection) still share.

        A service with several workers of one group subscribes them all on its
        own broker: each message must still reach exactly one of them.
        """
        _need(conformance.capabilities.queue_groups, "queue_groups")

        async def case(h: Harness) -> None:
            pub, sub = await h.broker(), await h.broker()
            topic = h.topic("queue.local")
            members = [Inbox(f"member {i}") for i in range(3)]
            for member in members:
                await sub.subscribe(topic, member, queue="local-workers")
            await h.settle()
            total = 60
            for n in range(total):
                await pub.publish(topic, Message(str(n).encode()))
            await Inbox("group").wait_until(
                lambda: len({b for m in members for b in m.bodies}) >= total,
                h.timeout,
                "delivery of every message to the group",
            )
            await asyncio.sleep(h.quiet)
            received = [body for member in members for body in member.bodies]
            duplicated = sorted(b for b, count in Counter(received).items() if count > 1)
            assert not duplicated, (
                f"{len(duplicated)} of {total} messages reached more than one member "
                f"of the group on one connection, e.g. {duplicated[:5]}"
            )
            assert len(received) == total

        self._run(conformance, case)

    def test_order_is_kept_for_one_subscriber(self, conformance: Harness) -> None:
        _need(conformance.capabilities.ordering, "ordering")

        async def case(h: Harness) -> None:
            pub, sub = await h.broker(), await h.broker()
            topic = h.topic("order")
            inbox = Inbox()
            await sub.subscribe(topic, inbox)
            await h.settle()
            for n in range(500):
                await pub.publish(topic, Message(str(n).encode()))
            await inbox.wait_for(500, h.timeout)
            received = [int(b) for b in inbox.bodies]
            assert received == list(range(500)), "messages arrived out of order"

        self._run(conformance, case)

    def test_unsubscribe_stops_delivery_and_a_new_subscription_works(
        self, conformance: Harness
    ) -> None:
        async def case(h: Harness) -> None:
            pub, sub = await h.broker(), await h.broker()
            topic = h.topic("unsub")
            first = Inbox("first subscription")
            subscription = await sub.subscribe(topic, first)
            await h.settle()
            await pub.publish(topic, Message(b"before"))
            await first.wait_for(1, h.timeout)
            await subscription.unsubscribe()
            assert not subscription.active
            await subscription.unsubscribe()  # twice is harmless
            await pub.publish(topic, Message(b"after"))
            await asyncio.sleep(h.quiet)
            assert first.bodies == [b"before"], "a message arrived after unsubscribe()"
            second = Inbox("second subscription")
            await sub.subscribe(topic, second)
            await h.settle()
            await pub.publish(topic, Message(b"again"))
            await second.wait_until(
                lambda: b"again" in second.bodies, h.timeout, "delivery to the new subscription"
            )

        self._run(conformance, case)

    def test_nack_leads_to_redelivery(self, conformance: Harness) -> None:
        _need(conformance.capabilities.ack, "ack")

        async def case(h: Harness) -> None:
            pub, sub = await h.broker(), await h.broker()
            topic = h.topic("nack")
            seen = Inbox()

            async def handler(delivery: Delivery) -> None:
                seen.record(delivery)
                if len(seen) == 1:
                    await delivery.nack(delay=0)
                else:
                    await delivery.ack()

            await sub.subscribe(topic, handler, auto_ack=False)
            await h.settle()
            await pub.publish(topic, Message(b"again please", {"X-Key": "kept"}))
            await seen.wait_for(2, h.timeout)
            first, second = seen.deliveries[:2]
            assert second.message.body == b"again please"
            assert second.message.header("X-Key") == "kept", "redelivery lost the headers"
            assert second.attempt > first.attempt, "a redelivery must count its attempt"
            await asyncio.sleep(h.quiet)
            assert len(seen) == 2, "an acked message was delivered again"

        self._run(conformance, case)

    def test_handler_exception_leads_to_redelivery(self, conformance: Harness) -> None:
        _need(conformance.capabilities.ack, "ack")

        async def case(h: Harness) -> None:
            pub, sub = await h.broker(), await h.broker()
            topic = h.topic("raise")
            seen = Inbox()

            async def handler(delivery: Delivery) -> None:
                seen.record(delivery)
                if len(seen) == 1:
                    raise RuntimeError("conformance: a deliberate handler failure")

            await sub.subscribe(topic, handler)
            await h.settle()
            await pub.publish(topic, Message(b"retry me"))
            await seen.wait_for(2, h.timeout)
            assert seen.bodies[:2] == [b"retry me", b"retry me"]
            await asyncio.sleep(h.quiet)
            assert len(seen) == 2, "a message handled successfully was delivered again"

        self._run(conformance, case)

    def test_retries_then_dead_letter(self, conformance: Harness) -> None:
        """A message that keeps failing is retried by the broker, then dead-lettered whole.

        The others on the same subscription are handled as usual.
        """
        _need(conformance.capabilities.ack, "ack")

        async def case(h: Harness) -> None:
            pub, sub = await h.broker(), await h.broker()
            topic = h.topic("retry")
            policy = RetryPolicy(max_attempts=3, backoff=0.05, max_backoff=0.2)
            attempts: Counter[bytes] = Counter()
            handled = Inbox()
            dead = Inbox()

            async def handler(delivery: Delivery) -> None:
                attempts[delivery.message.body] += 1
                if delivery.message.body == b"poison":
                    raise ValueError("conformance: this one never works")
                handled.record(delivery)

            await pub.subscribe(f"{topic}.dlq", dead)
            await sub.subscribe(topic, handler, retry=policy)
            await h.settle()
            await pub.publish(topic, Message(b"fine-1"))
            await pub.publish(topic, Message(b"poison", {"X-Order": "42"}))
            await pub.publish(topic, Message(b"fine-2"))
            await dead.wait_for(1, h.timeout * 2)
            await handled.wait_for(2, h.timeout)
            await asyncio.sleep(h.quiet)
            letter = dead.deliveries[0].message
            assert letter.body == b"poison"
            assert letter.header("X-Order") == "42", "the dead letter lost the original headers"
            assert letter.header(ORIGINAL_TOPIC) == topic
            assert letter.header(ATTEMPTS) == "3"
            assert "never works" in (letter.header(ERROR) or "")
            assert attempts[b"poison"] == 3, f"{attempts[b'poison']} attempts, expected 3"
            assert len(dead) == 1, "one dead letter per message"
            assert sorted(handled.bodies) == [b"fine-1", b"fine-2"]
            assert attempts[b"fine-1"] == attempts[b"fine-2"] == 1

        self._run(conformance, case)

    def test_an_event_is_dead_lettered_after_its_attempts(self, conformance: Harness) -> None:
        """A typed Event (it has a ``Micro-ID``) that keeps failing reaches the DLQ and on_error.

        The dead letter has an id of its own, the original's in ``Micro-Original-ID``:
        a broker that de-duplicates by message id must not take it for the original.
        """
        _need(conformance.capabilities.ack, "ack")

        async def case(h: Harness) -> None:
            pub, sub = await h.broker(), await h.broker()
            topic = h.topic("event.dlq")
            policy = RetryPolicy(max_attempts=2, backoff=0.05, max_backoff=0.2)
            attempts = Inbox("attempts")
            dead = Inbox("dead letters")

            async def handler(delivery: Delivery) -> None:
                attempts.record(delivery)
                raise ValueError("conformance: this event never works")

            with ErrorCatcher() as errors:
                await pub.subscribe(f"{topic}.dlq", dead)
                await sub.subscribe(topic, handler, retry=policy)
                await h.settle()
                publisher = Service("conformance-event-publisher", broker=pub)
                await publisher.event(topic).publish({"order": 1}, metadata={"Tenant": "t"})
                await dead.wait_for(1, h.timeout * 2)
                await errors.wait_for(GivenUp, h.timeout)
                await asyncio.sleep(h.quiet)
            original = attempts.deliveries[0].message
            letter = dead.deliveries[0].message
            assert len(attempts) == 2, f"{len(attempts)} attempts, the policy allows 2"
            assert len(dead) == 1, "one dead letter per message"
            assert letter.body == original.body
            assert letter.header("Tenant") == "t", "the dead letter lost the original headers"
            assert letter.header(ORIGINAL_ID) == original.header(ID), (
                "the dead letter must carry the original's Micro-ID as Micro-Original-ID"
            )
            assert letter.header(ID), "the dead letter must have a Micro-ID of its own"
            assert letter.header(ID) != original.header(ID), "the dead letter needs its own id"
            assert letter.header(ATTEMPTS) == "2"
            given_up = [e for e, _ in errors.of(GivenUp)]
            assert len(given_up) == 1
            assert given_up[0].dead_letter == f"{topic}.dlq"
            assert len(errors.of(ValueError)) == 2, "each failed attempt reaches on_error"

        self._run(conformance, case)

    def test_a_poison_message_is_given_up_by_default(self, conformance: Harness) -> None:
        """With no retry policy, a message that always fails is given up, not redelivered for ever.

        With acknowledgement it gets the default policy's attempts
        (``DEFAULT_RETRY.max_attempts``), without it one; then it is
        dead-lettered, ``on_error`` hears a ``GivenUp``, and the subscription
        goes on with the next message.
        """

        async def case(h: Harness) -> None:
            pub, sub = await h.broker(), await h.broker()
            topic = h.topic("poison")
            attempts: Counter[bytes] = Counter()
            handled = Inbox("handled")
            dead = Inbox("dead letters")

            async def handler(delivery: Delivery) -> None:
                attempts[delivery.message.body] += 1
                if delivery.message.body == b"poison":
                    raise RuntimeError("conformance: poison")
                handled.record(delivery)

            with ErrorCatcher() as errors:
                await pub.subscribe(f"{topic}.dlq", dead)
                await sub.subscribe(topic, handler)
                await h.settle()
                await pub.publish(topic, Message(b"poison"))
                await pub.publish(topic, Message(b"fine"))
                await errors.wait_for(GivenUp, h.timeout * 3)
                await handled.wait_for(1, h.timeout)
                await dead.wait_for(1, h.timeout)
                await asyncio.sleep(h.quiet)
            expected = DEFAULT_RETRY.max_attempts if h.capabilities.ack else 1
            assert attempts[b"poison"] == expected, (
                f"the poison message was delivered {attempts[b'poison']} times, expected {expected}"
            )
            assert attempts[b"fine"] == 1
            assert dead.bodies == [b"poison"]
            assert dead.deliveries[0].message.header(ORIGINAL_TOPIC) == topic
            (given_up, delivery), *rest = errors.of(GivenUp)
            assert not rest, "one give-up per message"
            assert given_up.attempts == expected
            assert delivery is not None
            assert delivery.rejected

        self._run(conformance, case)

    def test_bad_headers_are_refused_before_anything_is_sent(self, conformance: Harness) -> None:
        """CR, LF or NUL in a value, a bad name or a non-str value: InvalidHeader everywhere."""

        async def case(h: Harness) -> None:
            pub, sub = await h.broker(), await h.broker()
            topic = h.topic("badheaders")
            inbox = Inbox()
            await sub.subscribe(topic, inbox)
            await h.settle()
            bad: list[dict[str, Any]] = [
                {"X-Split": "a\r\nX-Injected: yes"},
                {"X-Newline": "a\nb"},
                {"X-Nul": "a\0b"},
                {"Bad Name": "v"},
                {"X:Colon": "v"},
                {"": "v"},
                {"X-Number": 5},
            ]
            for headers in bad:
                with pytest.raises(InvalidHeader):
                    await pub.publish(topic, Message(b"bad", headers))
            assert pub.connected
            await pub.publish(topic, Message(b"good", {"X-Fine": "yes"}))
            await inbox.wait_for(1, h.timeout)
            await asyncio.sleep(h.quiet)
            assert inbox.bodies == [b"good"], "a message with a bad header was sent"

        self._run(conformance, case)

    def test_event_hooks_see_every_publish_and_delivery(self, conformance: Harness) -> None:
        """The plugins' event hooks apply to this broker however it was made."""

        async def case(h: Harness) -> None:
            pub, sub = await h.broker(), await h.broker()
            topic = h.topic("hooks")
            seen: dict[str, list[Any]] = {"publish": [], "deliver": [], "wrapped": []}

            class Observer:
                @hookimpl
                def on_publish(self, broker: Broker, topic: str, message: Message) -> None:
                    message.headers["X-Observed"] = "yes"
                    seen["publish"].append((broker, topic))

                @hookimpl
                def on_deliver(self, broker: Broker, delivery: Delivery) -> None:
                    seen["deliver"].append((broker, delivery.topic))

                @hookimpl
                def wrap_handler(
                    self, broker: Broker, topic: str, queue: str | None, handler: Any
                ) -> Any:
                    async def wrapped(delivery: Delivery) -> None:
                        seen["wrapped"].append(delivery.message.header("X-Observed"))
                        await handler(delivery)

                    return wrapped

            observer = Observer()
            name = register_plugin(observer, name=f"conformance-observer-{id(observer)}")
            try:
                inbox = Inbox()
                await sub.subscribe(topic, inbox)
                await h.settle()
                await pub.publish(topic, Message(b"observed"))
                await inbox.wait_for(1, h.timeout)
            finally:
                unregister_plugin(name)
            assert (pub, topic) in seen["publish"], "on_publish did not see the publish"
            assert (sub, topic) in seen["deliver"], "on_deliver did not see the delivery"
            assert seen["wrapped"] == ["yes"], "wrap_handler did not wrap the handler"
            assert inbox.deliveries[0].message.header("X-Observed") == "yes"

        self._run(conformance, case)

    def test_subscription_survives_handler_errors(self, conformance: Harness) -> None:
        """A handler that raises does not end its subscription."""

        async def case(h: Harness) -> None:
            pub, sub = await h.broker(), await h.broker()
            topic = h.topic("survive")
            handled = Inbox("successful handlings")
            failures = Counter[bytes]()

            async def handler(delivery: Delivery) -> None:
                body = delivery.message.body
                if body.startswith(b"bad") and failures[body] == 0:
                    failures[body] += 1
                    raise RuntimeError("conformance: a deliberate handler failure")
                handled.record(delivery)

            await sub.subscribe(topic, handler)
            await h.settle()
            for n in range(5):
                await pub.publish(topic, Message(f"bad{n}".encode()))
                await pub.publish(topic, Message(f"good{n}".encode()))
            goods = {f"good{n}".encode() for n in range(5)}
            await handled.wait_until(
                lambda: goods <= set(handled.bodies), h.timeout, "every good message handled"
            )
            assert sum(failures.values()) >= 1

        self._run(conformance, case)

    def test_concurrent_publish_and_close(self, conformance: Harness) -> None:
        """Publishes racing a disconnect either succeed or raise a microbroker error; none hang."""

        async def case(h: Harness) -> None:
            pub = await h.broker()
            topic = h.topic("close")
            sub = await h.broker()
            await sub.subscribe(topic, Inbox())

            async def publish(n: int) -> BaseException | None:
                try:
                    await pub.publish(topic, Message(str(n).encode()))
                except MicrobrokerError as exc:
                    return exc
                return None

            tasks = [asyncio.create_task(publish(n)) for n in range(200)]
            await asyncio.sleep(0)
            await asyncio.wait_for(pub.disconnect(), h.timeout)
            done, pending = await asyncio.wait(tasks, timeout=h.timeout)
            assert not pending, f"{len(pending)} publishes hung after disconnect()"
            for task in done:
                task.result()  # anything but a MicrobrokerError is raised here
            assert not pub.connected
            with pytest.raises(NotConnected):
                await pub.publish(topic, Message(b"late"))

        self._run(conformance, case)

    def test_publish_before_connect_and_after_disconnect_fails_clearly(
        self, conformance: Harness
    ) -> None:
        async def case(h: Harness) -> None:
            broker = h.new_broker()
            with pytest.raises(NotConnected):
                await broker.publish(h.topic("early"), Message(b"x"))
            with pytest.raises(NotConnected):
                await broker.subscribe(h.topic("early"), Inbox())
            await broker.connect()
            assert _is_connected(broker)
            await broker.disconnect()
            assert not _is_connected(broker)
            with pytest.raises(NotConnected):
                await broker.publish(h.topic("late"), Message(b"x"))
            await broker.disconnect()  # twice is harmless

        self._run(conformance, case)

    def test_async_with_connects_and_disconnects(self, conformance: Harness) -> None:
        async def case(h: Harness) -> None:
            broker = h.new_broker()
            async with broker as entered:
                assert entered is broker
                assert broker.connected
            assert not broker.connected

        self._run(conformance, case)

    def test_no_message_lost(self, conformance: Harness) -> None:
        """Ten thousand messages, none lost, where delivery is at-least-once."""
        _need(conformance.capabilities.at_least_once, "at_least_once")

        async def case(h: Harness) -> None:
            pub, sub = await h.broker(), await h.broker()
            topic = h.topic("bulk")
            inbox = Inbox()
            await sub.subscribe(topic, inbox)
            await h.settle()
            total = self.bulk_messages
            await gather_limited(
                [pub.publish(topic, Message(str(n).encode())) for n in range(total)], 64
            )
            await inbox.wait_until(
                lambda: len(set(inbox.bodies)) >= total,
                h.timeout * 6,
                f"delivery of all {total} messages",
            )
            missing = {str(n).encode() for n in range(total)} - set(inbox.bodies)
            assert not missing, f"{len(missing)} of {total} messages lost"

        self._run(conformance, case)

    def test_wildcard_subscriptions(self, conformance: Harness) -> None:
        wildcards = conformance.capabilities.wildcards
        _need(wildcards is not None, "wildcards")
        assert wildcards is not None

        async def case(h: Harness) -> None:
            pub, sub = await h.broker(), await h.broker()
            sep = wildcards.separator
            root = h.topic("wild").replace(".", "_")
            one, many = Inbox("one-level"), Inbox("many-levels")
            await sub.subscribe(sep.join([root, wildcards.one, "end"]), one)
            await sub.subscribe(sep.join([root, wildcards.many]), many)
            await h.settle()
            topics = [
                sep.join([root, "a", "end"]),
                sep.join([root, "b", "end"]),
                sep.join([root, "a", "b", "end"]),
                sep.join([root, "x"]),
            ]
            if wildcards.many_matches_zero:
                # Declared: the many-level wildcard also matches its parent (AMQP, MQTT).
                topics.append(root)
            for topic in topics:
                await pub.publish(topic, Message(topic.encode()))
            await many.wait_for(len(topics), h.timeout)
            await one.wait_for(2, h.timeout)
            await asyncio.sleep(h.quiet)
            assert sorted(one.bodies) == sorted(t.encode() for t in topics[:2])
            assert sorted(many.bodies) == sorted(t.encode() for t in topics)
            assert {d.topic for d in one.deliveries} == set(topics[:2]), (
                "a wildcard delivery must carry the concrete topic"
            )

        self._run(conformance, case)

    def test_max_message_size_is_enforced_clearly(self, conformance: Harness) -> None:
        """One byte over the limit (body plus headers) is MessageTooLarge; the broker goes on."""
        limit = conformance.capabilities.max_message_size
        _need(limit is not None, "max_message_size")
        assert limit is not None

        async def case(h: Harness) -> None:
            pub, sub = await h.broker(), await h.broker()
            topic = h.topic("huge")
            inbox = Inbox()
            await sub.subscribe(topic, inbox)
            await h.settle()
            headers = {"X-Padding": "p" * 16}
            body = b"\0" * (limit + 1 - header_size(headers))
            with pytest.raises(MessageTooLarge):
                await pub.publish(topic, Message(body, headers))
            with pytest.raises(MessageTooLarge):
                await pub.publish(topic, Message(b"\0" * (limit + 1)))
            assert pub.connected, "an oversized publish must not break the connection"
            await pub.publish(topic, Message(b"after"))
            await inbox.wait_for(1, h.timeout)
            assert inbox.bodies == [b"after"], "an oversized message must not be sent"

        self._run(conformance, case)

    def test_header_limits_are_enforced_clearly(self, conformance: Harness) -> None:
        """One header more than ``max_headers`` is InvalidHeader, one byte of headers more than
        ``max_header_bytes`` is MessageTooLarge; messages at the limits arrive whole (when they
        fit within ``max_message_size``), and the broker goes on."""
        caps = conformance.capabilities
        _need(
            caps.max_headers is not None or caps.max_header_bytes is not None,
            "max_headers or max_header_bytes",
        )
        size_limit = caps.max_message_size

        def fits(headers: dict[str, str]) -> bool:
            return size_limit is None or header_size(headers) + 1 <= size_limit

        async def case(h: Harness) -> None:
            pub, sub = await h.broker(), await h.broker()
            topic = h.topic("headerlimits")
            inbox = Inbox()
            await sub.subscribe(topic, inbox)
            await h.settle()
            carried: list[dict[str, str]] = []
            most = caps.max_headers
            if most is not None:
                many = {f"X-H{i}": "" for i in range(most + 1)}
                with pytest.raises(InvalidHeader, match="max_headers"):
                    await pub.publish(topic, Message(b"many", many))
                exact = {f"X-H{i}": "" for i in range(most)}
                within_bytes = caps.max_header_bytes is None or (
                    header_size(exact) <= caps.max_header_bytes
                )
                if within_bytes and fits(exact):
                    carried.append(exact)
            most = caps.max_header_bytes
            if most is not None:
                name = "X-Big"
                over = {name: "v" * (most + 1 - len(name))}
                with pytest.raises(MessageTooLarge, match="max_header_bytes"):
                    await pub.publish(topic, Message(b"big", over))
                # Bytes, not characters: a two-byte letter counts twice.
                wide = {name: "é" * ((most - len(name)) // 2 + 1)}
                with pytest.raises(MessageTooLarge, match="max_header_bytes"):
                    await pub.publish(topic, Message(b"wide", wide))
                exact = {name: "v" * (most - len(name))}
                if fits(exact):
                    carried.append(exact)
            assert pub.connected, "a refused publish must not break the connection"
            for i, headers in enumerate(carried):
                await pub.publish(topic, Message(b"%d" % i, dict(headers)))
            await pub.publish(topic, Message(b"after"))
            await inbox.wait_for(len(carried) + 1, h.timeout)
            await asyncio.sleep(h.quiet)
            expected = [b"%d" % i for i in range(len(carried))] + [b"after"]
            assert sorted(inbox.bodies) == sorted(expected), "a refused message was sent"
            for delivery in inbox.deliveries:
                if delivery.message.body == b"after":
                    continue
                headers = carried[int(delivery.message.body)]
                for key, value in headers.items():
                    assert delivery.message.header(key) == value, (
                        f"a message with headers at the limit lost or changed {key}"
                    )

        self._run(conformance, case)

    def test_reconnect_after_server_restart(self, conformance: Harness) -> None:
        _need(conformance.capabilities.reconnect, "reconnect")
        if not conformance.can_restart:
            pytest.skip("no restart_server fixture (or --restart-command) was given")

        async def case(h: Harness) -> None:
            pub, sub = await h.broker(), await h.broker()
            topic = h.topic("restart")
            inbox = Inbox()
            await sub.subscribe(topic, inbox)
            await h.settle()
            await pub.publish(topic, Message(b"before"))
            await inbox.wait_for(1, h.timeout)
            await h.restart()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + h.timeout * 3
            errors: list[BaseException] = []
            n = 0
            while loop.time() < deadline:
                n += 1
                try:
                    await asyncio.wait_for(
                        pub.publish(topic, Message(f"after{n}".encode())), h.timeout
                    )
                except Exception as exc:  # the publisher may be reconnecting still
                    errors.append(exc)
                if any(b.startswith(b"after") for b in inbox.bodies):
                    break
                await asyncio.sleep(0.25)
            assert any(b.startswith(b"after") for b in inbox.bodies), (
                "the subscription did not resume after the server restarted "
                f"(publish errors: {errors[-3:]})"
            )
            assert pub.connected
            assert sub.connected

        self._run(conformance, case)

    def test_messages_persist_across_server_restart(self, conformance: Harness) -> None:
        """A durable (queue group) subscriber gets what was published while it was away."""
        caps = conformance.capabilities
        _need(caps.persistence and caps.queue_groups, "persistence and queue_groups")
        if not conformance.can_restart:
            pytest.skip("no restart_server fixture (or --restart-command) was given")

        async def case(h: Harness) -> None:
            topic = h.topic("persist")
            first = await h.broker()
            inbox = Inbox("durable group, first consumer")
            await first.subscribe(topic, inbox, queue="durable")
            await h.settle()
            pub = await h.broker()
            await pub.publish(topic, Message(b"one"))
            await inbox.wait_for(1, h.timeout)
            await first.disconnect()
            await pub.publish(topic, Message(b"kept"))
            await pub.disconnect()
            await h.restart()
            second = await h.broker()
            later = Inbox("durable group, after restart")
            await second.subscribe(topic, later, queue="durable")
            await later.wait_until(
                lambda: b"kept" in later.bodies, h.timeout * 3, "delivery of the kept message"
            )

        self._run(conformance, case)

    def test_typed_events_protobuf_and_json(self, conformance: Harness) -> None:
        """Event publishes and typed subscribers over this broker, protobuf and JSON."""

        async def case(h: Harness) -> None:
            pub, sub = await h.broker(), await h.broker()
            proto_topic, json_topic = h.topic("event-proto"), h.topic("event-json")
            publisher = Service("conformance-publisher", broker=pub)
            subscriber = Service("conformance-subscriber", broker=sub)
            protos = Inbox("protobuf subscriber")
            dicts = Inbox("json subscriber")
            got: list[tuple[Any, Context]] = []

            @subscriber.subscriber(proto_topic)
            async def on_proto(msg: wrappers_pb2.StringValue, ctx: Context) -> None:
                got.append((msg, ctx))
                protos.record(ctx.delivery)

            @subscriber.subscriber(json_topic)
            async def on_json(msg: dict[str, Any], ctx: Context) -> None:
                got.append((msg, ctx))
                dicts.record(ctx.delivery)

            async with subscriber:
                await h.settle()
                await publisher.event(proto_topic).publish(
                    wrappers_pb2.StringValue(value="hello"), metadata={"Tenant": "a"}
                )
                await publisher.event(json_topic).publish(
                    {"id": 7, "name": "json"}, metadata={"tenant": "b"}
                )
                # A protobuf type can travel in its JSON mapping too.
                await publisher.event(proto_topic).publish(
                    wrappers_pb2.StringValue(value="as json"), content_type="application/json"
                )
                await protos.wait_for(2, h.timeout)
                await dicts.wait_for(1, h.timeout)
            values = {repr(v) for v, _ in got}
            assert repr(wrappers_pb2.StringValue(value="hello")) in values
            assert repr({"id": 7, "name": "json"}) in values
            assert repr(wrappers_pb2.StringValue(value="as json")) in values
            for _, ctx in got:
                assert ctx.metadata.get("TENANT") in ("a", "b", None)
                assert ctx.message_id, "Micro-Id must be set on every typed publish"
                assert ctx.metadata["micro-topic"] == ctx.topic
            proto_ctx = next(
                c for v, c in got if isinstance(v, wrappers_pb2.StringValue) and v.value == "hello"
            )
            assert proto_ctx.metadata["tenant"] == "a"
            assert proto_ctx.content_type == "application/protobuf"
            ids = [c.message_id for _, c in got]
            assert len(set(ids)) == len(ids), "Micro-Id must differ between messages"

        self._run(conformance, case)

    def test_undecodable_body_raises_decode_error_and_nothing_else_is_lost(
        self, conformance: Harness
    ) -> None:
        """A raw publish a typed subscriber cannot decode: a DecodeError to the hooks, no harm.

        The handler never sees it; it is given up at once (decoding the same
        bytes again cannot succeed): dead-lettered, and ``on_error`` hears a
        ``GivenUp``; the next message is handled as usual.
        """

        async def case(h: Harness) -> None:
            pub, sub = await h.broker(), await h.broker()
            topic = h.topic("decode")
            dead = Inbox("dead letters")
            with ErrorCatcher() as errors:
                service = Service("conformance-decode", broker=sub)
                handled: list[str] = []
                arrived = Inbox("typed subscriber")

                @service.subscriber(topic)
                async def on_value(msg: wrappers_pb2.StringValue, ctx: Context) -> None:
                    handled.append(msg.value)
                    arrived.record(ctx.delivery)

                await pub.subscribe(f"{topic}.dlq", dead)
                async with service:
                    await h.settle()
                    await pub.publish(
                        topic,
                        Message(b"\xffnot protobuf", {"Content-Type": "application/protobuf"}),
                    )
                    await pub.publish(
                        topic,
                        Message(
                            wrappers_pb2.StringValue(value="good").SerializeToString(),
                            {"Content-Type": "application/protobuf"},
                        ),
                    )
                    await arrived.wait_for(1, h.timeout)
                    await errors.wait_for(GivenUp, h.timeout)
                    await dead.wait_for(1, h.timeout)
            assert handled == ["good"], "the handler must never see an undecodable body"
            error, delivery = errors.of(DecodeError)[0]
            assert error.topic == topic
            assert error.content_type == "application/protobuf"
            assert error.expected is wrappers_pb2.StringValue
            assert error.cause is not None
            assert delivery is not None
            assert delivery.message.body == b"\xffnot protobuf"
            assert delivery.rejected, "an undecodable message is given up, not acked or nacked"
            assert dead.bodies == [b"\xffnot protobuf"]
            assert len(errors.of(DecodeError)) == 1, "an undecodable message is tried once"

        self._run(conformance, case)
