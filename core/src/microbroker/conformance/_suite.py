"""The conformance cases. A broker plugin's test module subclasses :class:`BrokerConformance`."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from google.protobuf import wrappers_pb2

from .. import hookimpl
from .._broker import Broker
from .._context import Context
from .._errors import DecodeError, MicrobrokerError, NotConnected
from .._message import Delivery, Message
from .._registry import register_plugin, unregister_plugin
from .._retry import ATTEMPTS, ERROR, ORIGINAL_TOPIC, RetryPolicy, retrying
from .._service import Service
from ._harness import BrokerFactory, Harness, Inbox, RestartServer, gather_limited
from ._rpc_cases import RpcConformance

Case = Callable[[Harness], Coroutine[Any, Any, None]]

BODY_SIZES = (0, 1, 127, 1024, 64 * 1024, 1024 * 1024)
HEADERS = {
    "X-Plain": "value",
    "X-Empty": "",
    "X-Spaces": "a value with spaces",
    "X-Unicode": "héllo wörld ✓",
    "X-Symbols": "k=v;a,b:c/d?e&f#g",
}


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
        """The broker says what it promises, and its name."""
        broker = conformance.new_broker()
        caps = broker.capabilities
        assert caps.max_message_size is None or caps.max_message_size >= 1024 * 1024, (
            "a broker must carry at least 1 MiB bodies"
        )
        assert isinstance(str(broker), str)
        assert str(broker)
        assert not broker.connected, "a new broker must not be connected before connect()"

    def test_round_trip_headers_and_binary_bodies(self, conformance: Harness) -> None:
        """Bodies of 0 bytes to 1 MiB, every byte value, and headers arrive intact."""

        async def case(h: Harness) -> None:
            pub, sub = await h.broker(), await h.broker()
            topic = h.topic("roundtrip")
            inbox = Inbox()
            await sub.subscribe(topic, inbox)
            await h.settle()
            rng = random.Random(42)
            sent = []
            for size in BODY_SIZES:
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
            await sub.subscribe(topic, retrying(handler, sub, policy))
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
            for topic in topics:
                await pub.publish(topic, Message(topic.encode()))
            await many.wait_for(4, h.timeout)
            await one.wait_for(2, h.timeout)
            await asyncio.sleep(h.quiet)
            assert sorted(one.bodies) == sorted(t.encode() for t in topics[:2])
            assert sorted(many.bodies) == sorted(t.encode() for t in topics)
            assert {d.topic for d in one.deliveries} == set(topics[:2]), (
                "a wildcard delivery must carry the concrete topic"
            )

        self._run(conformance, case)

    def test_max_message_size_is_enforced_clearly(self, conformance: Harness) -> None:
        limit = conformance.capabilities.max_message_size
        _need(limit is not None, "max_message_size")
        assert limit is not None

        async def case(h: Harness) -> None:
            pub = await h.broker()
            with pytest.raises(MicrobrokerError):
                await pub.publish(h.topic("huge"), Message(b"\0" * (limit + 1)))
            assert pub.connected, "an oversized publish must not break the connection"

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
        """A raw publish a typed subscriber cannot decode: DecodeError to the hooks, no harm."""

        async def case(h: Harness) -> None:
            pub, sub = await h.broker(), await h.broker()
            topic = h.topic("decode")
            errors: list[tuple[BaseException, Delivery | None]] = []

            class Catcher:
                @hookimpl
                def on_error(self, error: BaseException, delivery: Delivery | None) -> None:
                    errors.append((error, delivery))

            catcher = Catcher()
            register_plugin(catcher, name=f"conformance-catcher-{id(catcher)}")
            try:
                service = Service("conformance-decode", broker=sub)
                handled: list[str] = []
                arrived = Inbox("typed subscriber")

                @service.subscriber(topic)
                async def on_value(msg: wrappers_pb2.StringValue, ctx: Context) -> None:
                    handled.append(msg.value)
                    arrived.record(ctx.delivery)

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
                    await arrived.wait_until(
                        lambda: any(isinstance(e, DecodeError) for e, _ in errors),
                        h.timeout,
                        "a DecodeError reaching the on_error hook",
                    )
                assert handled == ["good"], "the handler must never see an undecodable body"
                decode_errors = [(e, d) for e, d in errors if isinstance(e, DecodeError)]
                error, delivery = decode_errors[0]
                assert isinstance(error, DecodeError)
                assert error.topic == topic
                assert error.content_type == "application/protobuf"
                assert error.expected is wrappers_pb2.StringValue
                assert error.cause is not None
                assert delivery is not None
                assert delivery.message.body == b"\xffnot protobuf"
                if h.capabilities.ack:
                    assert delivery.nacked, "an undecodable message must be nacked, not acked"
            finally:
                unregister_plugin(catcher)

        self._run(conformance, case)
