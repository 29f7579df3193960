"""The Broker API on the memory broker, the reference semantics every broker is held to."""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from _helpers import Inbox, new_address, quiesce, wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import microbroker
from microbroker import Message
from microbroker.brokers.memory import MemoryBroker


def memory(address: str, **options: Any) -> microbroker.Broker:
    return microbroker.get_broker("memory", address=address, **options)


#: Redeliveries within milliseconds: a quiet period of 50 ms then outlasts any backoff.
FAST = microbroker.RetryPolicy(backoff=0.001, max_backoff=0.005)


class Errors:
    """An ``on_error`` plugin recording what it is told."""

    def __init__(self) -> None:
        self.seen: list[tuple[BaseException, microbroker.Delivery | None]] = []

    @microbroker.hookimpl
    def on_error(self, error: BaseException, delivery: microbroker.Delivery | None) -> None:
        self.seen.append((error, delivery))


@pytest.fixture
def errors(plugin: Callable[..., str]) -> Errors:
    recorder = Errors()
    plugin(recorder, f"errors-{id(recorder)}")
    return recorder


# Fan-out and queue groups -----------------------------------------------------------------


async def test_broadcast_reaches_every_subscription(broker: microbroker.Broker) -> None:
    inboxes = [Inbox() for _ in range(3)]
    for inbox in inboxes:
        await broker.subscribe("news", inbox)
    for i in range(5):
        await broker.publish("news", Message(str(i).encode()))
    for inbox in inboxes:
        await inbox.wait_for(5)
        assert inbox.bodies == [b"0", b"1", b"2", b"3", b"4"]
        assert all(d.topic == "news" and d.queue is None for d in inbox.deliveries)


async def test_brokers_on_one_address_share_topics(address: str) -> None:
    inbox = Inbox()
    async with memory(address) as subscriber_side, memory(address) as publisher_side:
        await subscriber_side.subscribe("shared", inbox)
        await publisher_side.publish("shared", Message(b"across brokers"))
        assert (await inbox.wait_for(1))[0].message.body == b"across brokers"


async def test_addresses_are_isolated(address: str) -> None:
    inbox, other = Inbox(), Inbox()
    async with memory(address) as one, memory(address + "-other") as two:
        await one.subscribe("t", inbox)
        await two.subscribe("t", other)
        await two.publish("t", Message(b"only two"))
        await other.wait_for(1)
        await quiesce()
        assert len(inbox) == 0


async def test_queue_group_gives_each_message_to_exactly_one_member(
    broker: microbroker.Broker,
) -> None:
    members = [Inbox() for _ in range(3)]
    for member in members:
        await broker.subscribe("jobs", member, queue="workers")
    everyone = Inbox()
    await broker.subscribe("jobs", everyone)
    total = 30
    for i in range(total):
        await broker.publish("jobs", Message(str(i).encode()))
    await everyone.wait_for(total)
    await wait_until(lambda: sum(len(m) for m in members) >= total)
    await quiesce()
    got = Counter(body for m in members for body in m.bodies)
    assert got == Counter(str(i).encode() for i in range(total))  # each exactly once
    assert all(len(m) > 0 for m in members), [len(m) for m in members]  # spread over members
    assert all(d.queue == "workers" for m in members for d in m.deliveries)


async def test_each_queue_group_gets_every_message_once(broker: microbroker.Broker) -> None:
    billing = [Inbox(), Inbox()]
    shipping = [Inbox(), Inbox()]
    for member in billing:
        await broker.subscribe("orders", member, queue="billing")
    for member in shipping:
        await broker.subscribe("orders", member, queue="shipping")
    for i in range(10):
        await broker.publish("orders", Message(bytes([i])))
    for group in (billing, shipping):
        await wait_until(lambda group=group: sum(len(m) for m in group) >= 10)
    await quiesce()
    for group in (billing, shipping):
        assert sorted(b for m in group for b in m.bodies) == [bytes([i]) for i in range(10)]


async def test_leaving_member_hands_its_pending_messages_to_the_others(
    broker: microbroker.Broker,
) -> None:
    gate = asyncio.Event()

    async def stuck(delivery: microbroker.Delivery) -> None:
        await gate.wait()

    leaving = Inbox(stuck)
    staying = Inbox()
    sub = await broker.subscribe("work", leaving, queue="g")
    total = 20
    for i in range(total):
        await broker.publish("work", Message(str(i).encode()))
    # Round robin: half went to the member that is stuck on its first message.
    await leaving.wait_for(1)
    leave = asyncio.create_task(sub.unsubscribe())
    await wait_until(lambda: not sub.active)
    await broker.subscribe("work", staying, queue="g")
    gate.set()  # let the in-flight handler finish: unsubscribe drains it
    await leave
    await staying.wait_for(total - 1)
    await quiesce()
    delivered = leaving.bodies + staying.bodies
    assert sorted(delivered) == sorted(str(i).encode() for i in range(total))
    assert len(leaving) == 1


async def test_group_without_members_keeps_messages_for_the_next_member(
    broker: microbroker.Broker,
) -> None:
    first = await broker.subscribe("backlog", Inbox(), queue="g")
    await first.unsubscribe()
    for i in range(3):
        await broker.publish("backlog", Message(str(i).encode()))
    late = Inbox()
    await broker.subscribe("backlog", late, queue="g")
    await late.wait_for(3)
    assert late.bodies == [b"0", b"1", b"2"]


# Acknowledgement and redelivery -----------------------------------------------------------


async def test_nack_redelivers_with_increasing_attempt(address: str) -> None:
    async def nack_twice(delivery: microbroker.Delivery) -> None:
        if delivery.attempt < 3:
            await delivery.nack()

    inbox = Inbox(nack_twice)
    async with memory(address) as broker:
        await broker.subscribe("retry", inbox)
        await broker.publish("retry", Message(b"m", {"k": "v"}))
        await inbox.wait_for(3)
        await quiesce()
    assert [d.attempt for d in inbox.deliveries] == [1, 2, 3]
    assert [d.nacked for d in inbox.deliveries] == [True, True, False]
    assert inbox.deliveries[-1].acked
    assert all(d.message == Message(b"m", {"k": "v"}) for d in inbox.deliveries)


async def test_handler_exception_redelivers_and_is_reported(address: str, errors: Errors) -> None:
    async def fail_once(delivery: microbroker.Delivery) -> None:
        if delivery.attempt == 1:
            raise RuntimeError("handler failed")

    inbox = Inbox(fail_once)
    async with memory(address) as broker:
        await broker.subscribe("flaky", inbox)
        await broker.publish("flaky", Message(b"x"))
        await inbox.wait_for(2)
        await quiesce()
    assert [d.attempt for d in inbox.deliveries] == [1, 2]
    assert inbox.deliveries[0].nacked
    assert inbox.deliveries[1].acked
    reported = [e for e, d in errors.seen if d is inbox.deliveries[0]]
    assert [str(e) for e in reported] == ["handler failed"]


async def test_ack_ends_delivery(broker: microbroker.Broker) -> None:
    async def ack_then_fail(delivery: microbroker.Delivery) -> None:
        await delivery.ack()
        await delivery.nack()  # settling is idempotent: the first call decides
        if delivery.message.body == b"first":
            raise RuntimeError("after ack: still acked, not redelivered")

    inbox = Inbox(ack_then_fail)
    await broker.subscribe("acked", inbox, retry=FAST)
    await broker.publish("acked", Message(b"first"))
    await broker.publish("acked", Message(b"sentinel"))
    await inbox.wait_for(2)
    await asyncio.sleep(0.05)  # longer than the redelivery backoff
    await quiesce()
    assert inbox.bodies == [b"first", b"sentinel"]
    assert inbox.deliveries[0].acked


async def test_manual_ack_and_nack_with_auto_ack_off(address: str) -> None:
    inbox = Inbox()
    async with memory(address) as broker:
        await broker.subscribe("manual", inbox, auto_ack=False, retry=FAST)
        await broker.publish("manual", Message(b"m"))
        first = (await inbox.wait_for(1))[0]
        assert not first.settled  # nothing settles it for the handler
        await first.nack(delay=0)  # from outside the handler, after it returned
        second = (await inbox.wait_for(2))[1]
        assert second.attempt == 2
        await second.ack()
        await broker.publish("manual", Message(b"sentinel"))
        await inbox.wait_for(3)
        await asyncio.sleep(0.05)
        await quiesce()
    assert inbox.bodies == [b"m", b"m", b"sentinel"]


async def test_the_retry_policy_gives_up_and_reports(address: str, errors: Errors) -> None:
    async def always_fails(delivery: microbroker.Delivery) -> None:
        raise RuntimeError(f"attempt {delivery.attempt}")

    inbox = Inbox(always_fails)
    policy = microbroker.RetryPolicy(max_attempts=3, backoff=0.001)
    async with memory(address) as broker:
        await broker.subscribe("poison", inbox, retry=policy)
        await broker.publish("poison", Message(b"poison"))
        await wait_until(lambda: any(isinstance(e, microbroker.GivenUp) for e, _ in errors.seen))
        await quiesce()
    assert [d.attempt for d in inbox.deliveries] == [1, 2, 3]
    given_up = [(e, d) for e, d in errors.seen if isinstance(e, microbroker.GivenUp)]
    assert len(given_up) == 1
    assert "given up after 3 attempt(s)" in str(given_up[0][0])
    assert given_up[0][1] is inbox.deliveries[-1]
    assert inbox.deliveries[-1].rejected


async def test_nack_in_a_group_may_go_to_another_member_but_is_not_lost(
    broker: microbroker.Broker,
) -> None:
    async def nack_first(delivery: microbroker.Delivery) -> None:
        if delivery.attempt == 1:
            await delivery.nack(delay=0)

    members = [Inbox(nack_first), Inbox(nack_first)]
    for member in members:
        await broker.subscribe("g-retry", member, queue="g")
    for i in range(6):
        await broker.publish("g-retry", Message(str(i).encode()))
    await wait_until(lambda: sum(len(m) for m in members) >= 12)
    await quiesce()
    acked = Counter(d.message.body for m in members for d in m.deliveries if d.acked)
    assert acked == Counter(str(i).encode() for i in range(6))


# Bodies, headers, order -------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 64 * 1024, 1024 * 1024, 8 * 1024 * 1024])
async def test_bodies_of_any_size_arrive_intact(broker: microbroker.Broker, size: int) -> None:
    body = os.urandom(size)
    inbox = Inbox()
    await broker.subscribe("sizes", inbox)
    await broker.publish("sizes", Message(body, {"size": str(size)}))
    delivery = (await inbox.wait_for(1))[0]
    assert delivery.message.body == body
    assert delivery.message.headers == {"size": str(size)}


async def test_bytearray_and_memoryview_bodies_arrive_as_bytes(broker: microbroker.Broker) -> None:
    inbox = Inbox()
    await broker.subscribe("views", inbox)
    await broker.publish("views", Message(bytearray(b"abc")))  # type: ignore[arg-type]
    await broker.publish("views", Message(memoryview(b"def")))  # type: ignore[arg-type]
    await inbox.wait_for(2)
    assert inbox.bodies == [b"abc", b"def"]
    assert all(type(b) is bytes for b in inbox.bodies)


# Any header a transport can carry: token names, values of any text but CR, LF and NUL.
header_names = st.text(
    alphabet="!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
    min_size=1,
    max_size=20,
)
header_values = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\r\n\0"),
    max_size=50,
)
header_maps = st.dictionaries(header_names, header_values, max_size=8)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.binary(max_size=64 * 1024), headers=header_maps)
def test_any_bytes_and_headers_arrive_intact(body: bytes, headers: dict[str, str]) -> None:
    async def roundtrip() -> list[microbroker.Delivery]:
        inbox, other = Inbox(), Inbox()
        async with memory(new_address("hypothesis")) as broker:
            await broker.subscribe("any", inbox)
            await broker.subscribe("any", other, queue="q")
            await broker.publish("any", Message(body, dict(headers)))
            return [*await inbox.wait_for(1), *await other.wait_for(1)]

    for delivery in asyncio.run(roundtrip()):
        assert delivery.message.body == body
        assert delivery.message.headers == headers


async def test_subscribers_get_their_own_copy_of_headers(broker: microbroker.Broker) -> None:
    async def scribble(delivery: microbroker.Delivery) -> None:
        delivery.message.headers["scribbled"] = "yes"

    scribbler, reader = Inbox(scribble), Inbox()
    await broker.subscribe("copies", scribbler)
    await broker.subscribe("copies", reader)
    headers = {"a": "1"}
    await broker.publish("copies", Message(b"", headers))
    await scribbler.wait_for(1)
    await reader.wait_for(1)
    assert headers == {"a": "1"}
    assert reader.deliveries[0].message.headers.get("scribbled") is None


async def test_order_is_kept_per_topic_per_subscriber(broker: microbroker.Broker) -> None:
    async def sometimes_slow(delivery: microbroker.Delivery) -> None:
        if int(delivery.message.body) % 50 == 0:
            await asyncio.sleep(0)

    fast, slow, single_member = Inbox(), Inbox(sometimes_slow), Inbox()
    await broker.subscribe("seq", fast)
    await broker.subscribe("seq", slow)
    await broker.subscribe("seq", single_member, queue="one")
    total = 1000
    for i in range(total):
        await broker.publish("seq", Message(str(i).encode()))
    expected = [str(i).encode() for i in range(total)]
    for inbox in (fast, slow, single_member):
        await inbox.wait_for(total)
        assert inbox.bodies == expected


# Subscription lifecycle --------------------------------------------------------------------


async def test_unsubscribe_stops_delivery_and_a_new_subscription_works(
    broker: microbroker.Broker,
) -> None:
    old, witness = Inbox(), Inbox()
    sub = await broker.subscribe("life", old)
    await broker.subscribe("life", witness)
    await broker.publish("life", Message(b"1"))
    await old.wait_for(1)
    await sub.unsubscribe()
    await sub.unsubscribe()  # harmless twice
    assert not sub.active
    await broker.publish("life", Message(b"2"))
    await witness.wait_for(2)
    await quiesce()
    assert old.bodies == [b"1"]
    new = Inbox()
    await broker.subscribe("life", new)
    await broker.publish("life", Message(b"3"))
    assert (await new.wait_for(1))[0].message.body == b"3"


async def test_unsubscribe_from_inside_the_handler(broker: microbroker.Broker) -> None:
    subs: list[microbroker.Subscriber] = []

    async def leave(delivery: microbroker.Delivery) -> None:
        await subs[0].unsubscribe()

    inbox, witness = Inbox(leave), Inbox()
    subs.append(await broker.subscribe("self-leave", inbox))
    await broker.subscribe("self-leave", witness)
    for i in range(3):
        await broker.publish("self-leave", Message(str(i).encode()))
    await witness.wait_for(3)
    await quiesce()
    assert inbox.bodies == [b"0"]
    assert inbox.deliveries[0].acked  # the handler returned normally: auto-acked
    assert not subs[0].active


async def test_unsubscribe_lets_a_running_handler_finish(broker: microbroker.Broker) -> None:
    gate = asyncio.Event()
    finished: list[bytes] = []

    async def slow(delivery: microbroker.Delivery) -> None:
        await gate.wait()
        finished.append(delivery.message.body)

    inbox = Inbox(slow)
    sub = await broker.subscribe("drain", inbox)
    await broker.publish("drain", Message(b"in flight"))
    await inbox.wait_for(1)
    leaving = asyncio.create_task(sub.unsubscribe())
    await quiesce()
    assert not leaving.done()
    gate.set()
    await leaving
    assert finished == [b"in flight"]
    assert inbox.deliveries[0].acked


async def test_async_with_connects_and_disconnects(address: str) -> None:
    broker = memory(address)
    assert not broker.connected
    async with broker as entered:
        assert entered is broker
        assert broker.connected
        sub = await broker.subscribe("ctx", Inbox())
    assert not broker.connected
    assert not sub.active


async def test_publish_and_subscribe_need_a_connection(address: str) -> None:
    broker = memory(address)
    with pytest.raises(microbroker.NotConnected, match="connect"):
        await broker.publish("t", Message(b""))
    with pytest.raises(microbroker.NotConnected):
        await broker.subscribe("t", Inbox())
    await broker.connect()
    await broker.connect()  # idempotent
    await broker.publish("t", Message(b""))
    await broker.disconnect()
    with pytest.raises(microbroker.NotConnected):
        await broker.publish("t", Message(b""))
    await broker.disconnect()  # harmless twice


async def test_publish_takes_a_message(broker: microbroker.Broker) -> None:
    with pytest.raises(TypeError, match=r"Message\(body=\.\.\."):
        await broker.publish("t", b"raw bytes")  # type: ignore[arg-type]


async def test_subscribe_rejects_unknown_options(broker: microbroker.Broker) -> None:
    with pytest.raises(TypeError, match="durable"):
        await broker.subscribe("t", Inbox(), durable="x")


# Topics and wildcards ---------------------------------------------------------------------


@pytest.mark.parametrize("topic", ["", None, 3])
async def test_invalid_topics(broker: microbroker.Broker, topic: Any) -> None:
    with pytest.raises(microbroker.InvalidTopic):
        await broker.publish(topic, Message(b""))
    with pytest.raises(microbroker.InvalidTopic):
        await broker.subscribe(topic, Inbox())


@pytest.mark.parametrize("pattern", ["a.>.b", "a*", "a.b>", ">x"])
async def test_malformed_wildcards_are_invalid(broker: microbroker.Broker, pattern: str) -> None:
    with pytest.raises(microbroker.InvalidTopic):
        await broker.subscribe(pattern, Inbox())


@pytest.mark.parametrize("topic", ["a.*", "a.>", "*", ">"])
async def test_publishing_to_a_wildcard_is_invalid(broker: microbroker.Broker, topic: str) -> None:
    with pytest.raises(microbroker.InvalidTopic, match="wildcard"):
        await broker.publish(topic, Message(b""))


async def test_wildcards(broker: microbroker.Broker) -> None:
    wildcards = MemoryBroker.capabilities.wildcards
    assert wildcards is not None
    assert (wildcards.separator, wildcards.one, wildcards.many) == (".", "*", ">")
    one, many, exact, root = Inbox(), Inbox(), Inbox(), Inbox()
    await broker.subscribe("orders.*", one)
    await broker.subscribe("orders.>", many)
    await broker.subscribe("orders.eu", exact)
    await broker.subscribe(">", root)
    for topic in ("orders", "orders.eu", "orders.eu.paris", "orders.us", "other.eu"):
        await broker.publish(topic, Message(topic.encode()))
    await root.wait_for(5)
    await quiesce()
    assert one.bodies == [b"orders.eu", b"orders.us"]
    assert many.bodies == [b"orders.eu", b"orders.eu.paris", b"orders.us"]
    assert exact.bodies == [b"orders.eu"]
    # The delivery names the concrete topic, not the pattern.
    assert [d.topic for d in many.deliveries] == ["orders.eu", "orders.eu.paris", "orders.us"]


async def test_wildcard_queue_group(broker: microbroker.Broker) -> None:
    members = [Inbox(), Inbox()]
    for member in members:
        await broker.subscribe("jobs.*", member, queue="g")
    for i in range(10):
        await broker.publish(f"jobs.{i}", Message(b""))
    await wait_until(lambda: sum(len(m) for m in members) >= 10)
    await quiesce()
    assert sorted(d.topic for m in members for d in m.deliveries) == sorted(
        f"jobs.{i}" for i in range(10)
    )


# Backpressure ------------------------------------------------------------------------------


async def test_full_subscription_makes_publish_wait_then_proceed(address: str) -> None:
    gate = asyncio.Event()

    async def blocked(delivery: microbroker.Delivery) -> None:
        await gate.wait()

    inbox = Inbox(blocked)
    async with memory(address, max_pending=2, publish_timeout=30) as broker:
        await broker.subscribe("bp", inbox)
        await broker.publish("bp", Message(b"0"))
        await inbox.wait_for(1)  # in the handler; the inbox has room for 2 more
        await broker.publish("bp", Message(b"1"))
        await broker.publish("bp", Message(b"2"))
        waiting = asyncio.create_task(broker.publish("bp", Message(b"3")))
        await quiesce()
        assert not waiting.done()  # waits for room rather than dropping or growing
        gate.set()
        await waiting
        await inbox.wait_for(4)
    assert inbox.bodies == [b"0", b"1", b"2", b"3"]


async def test_full_subscription_times_out_with_publish_error(address: str) -> None:
    gate = asyncio.Event()

    async def blocked(delivery: microbroker.Delivery) -> None:
        await gate.wait()

    inbox = Inbox(blocked)
    async with memory(address, max_pending=1, publish_timeout=0.05) as broker:
        await broker.subscribe("bp", inbox)
        await broker.publish("bp", Message(b"0"))
        await inbox.wait_for(1)
        await broker.publish("bp", Message(b"1"))
        with pytest.raises(microbroker.PublishError, match="pending"):
            await broker.publish("bp", Message(b"2"))
        gate.set()
        await inbox.wait_for(2)


async def test_publish_from_a_handler_into_its_own_full_subscription_fails_fast(
    address: str,
) -> None:
    outcome: list[BaseException] = []

    async def republish(delivery: microbroker.Delivery) -> None:
        if delivery.message.body == b"go":
            await broker.publish("loop", Message(b"a"))
            try:
                await broker.publish("loop", Message(b"b"))
            except microbroker.PublishError as exc:
                outcome.append(exc)

    inbox = Inbox(republish)
    async with memory(address, max_pending=1, publish_timeout=30) as broker:
        await broker.subscribe("loop", inbox)
        await broker.publish("loop", Message(b"go"))
        await inbox.wait_for(2)
    assert len(outcome) == 1
    assert "its own handler" in str(outcome[0])


async def test_group_member_leaving_while_a_publish_waits_loses_nothing(address: str) -> None:
    """A publish waiting for room in a member that leaves goes to the group, not to the void."""
    gate = asyncio.Event()

    async def blocked(delivery: microbroker.Delivery) -> None:
        await gate.wait()

    full, other = Inbox(blocked), Inbox()
    async with memory(address, max_pending=1, publish_timeout=30) as broker:
        sub = await broker.subscribe("wq", full, queue="g")
        await broker.publish("wq", Message(b"0"))
        await full.wait_for(1)
        await broker.publish("wq", Message(b"1"))  # fills the only member's inbox
        waiting = asyncio.create_task(broker.publish("wq", Message(b"2")))
        await quiesce()
        assert not waiting.done()
        leave = asyncio.create_task(sub.unsubscribe())
        await wait_until(lambda: not sub.active)
        await broker.subscribe("wq", other, queue="g")
        gate.set()
        await leave
        await waiting
        await other.wait_for(2)
        await quiesce()
    assert full.bodies == [b"0"]
    assert sorted(other.bodies) == [b"1", b"2"]


def test_max_pending_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_pending"):
        MemoryBroker(max_pending=0)


def test_capabilities_and_repr() -> None:
    broker = microbroker.get_broker("memory", address="repr-bus")
    caps = broker.capabilities
    assert (caps.queue_groups, caps.ack, caps.at_least_once, caps.ordering) == (True,) * 4
    assert not caps.persistence
    assert "repr-bus" in repr(broker)
    assert str(broker) == "memory"


async def test_subscriber_leaving_while_a_publish_waits_does_not_starve_the_others(
    address: str,
) -> None:
    """The publish goes on to every other subscription, none skipped."""
    gate = asyncio.Event()

    async def blocked(delivery: microbroker.Delivery) -> None:
        await gate.wait()

    stuck, second, third = Inbox(blocked), Inbox(), Inbox()
    async with memory(address, max_pending=1, publish_timeout=30) as broker:
        sub = await broker.subscribe("fan", stuck)
        await broker.subscribe("fan", second)
        await broker.subscribe("fan", third)
        await broker.publish("fan", Message(b"0"))
        await stuck.wait_for(1)
        await broker.publish("fan", Message(b"1"))  # fills the stuck one's inbox
        await second.wait_for(2)
        waiting = asyncio.create_task(broker.publish("fan", Message(b"2")))
        await quiesce()
        assert not waiting.done()
        leave = asyncio.create_task(sub.unsubscribe())
        await wait_until(lambda: not sub.active)
        gate.set()
        await leave
        await waiting
        for inbox in (second, third):
            await inbox.wait_for(3)
            assert inbox.bodies == [b"0", b"1", b"2"]


async def test_new_group_joining_while_a_publish_waits(address: str) -> None:
    """A subscription made while a publish waits for room does not break that publish."""
    gate = asyncio.Event()

    async def blocked(delivery: microbroker.Delivery) -> None:
        await gate.wait()

    full, newcomer, newcomer_group = Inbox(blocked), Inbox(), Inbox()
    async with memory(address, max_pending=1, publish_timeout=30) as broker:
        await broker.subscribe("join", full, queue="a")
        await broker.publish("join", Message(b"0"))
        await full.wait_for(1)
        await broker.publish("join", Message(b"1"))
        waiting = asyncio.create_task(broker.publish("join", Message(b"2")))
        await quiesce()
        assert not waiting.done()
        await broker.subscribe("join", newcomer)
        await broker.subscribe("join", newcomer_group, queue="b")
        gate.set()
        await waiting
        await broker.publish("join", Message(b"3"))
        await full.wait_for(4)
        await newcomer.wait_for(1)
        await newcomer_group.wait_for(1)
    assert full.bodies == [b"0", b"1", b"2", b"3"]
    assert newcomer.bodies[-1] == b"3"
    assert newcomer_group.bodies[-1] == b"3"


operations = st.lists(
    st.one_of(
        st.just(("join", 0)),
        st.tuples(st.just("leave"), st.integers(min_value=0, max_value=7)),
        st.tuples(st.just("publish"), st.integers(min_value=1, max_value=5)),
    ),
    max_size=25,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=operations)
def test_queue_group_acks_every_message_exactly_once_whatever_joins_and_leaves(
    ops: list[tuple[str, int]],
) -> None:
    """Members come and go, some nack: every message is still acked once, by one member.

    A group exists from its first member on; what is published before that has
    no group to go to (as with NATS queue groups), so it is not expected.
    """

    async def scenario() -> tuple[list[int], Counter[int]]:
        acked: Counter[int] = Counter()
        done = asyncio.Event()
        expected: list[int] = []
        sent = 0

        async def handler(delivery: microbroker.Delivery) -> None:
            number = int(delivery.message.body)
            if number % 3 == 0 and delivery.attempt == 1:
                await delivery.nack(delay=0)
                return
            await delivery.ack()
            acked[number] += 1
            if sum(acked.values()) >= len(expected):
                done.set()

        async with memory(new_address("group-property")) as broker:
            members: list[microbroker.Subscriber] = []
            group_exists = False
            for op, arg in ops:
                if op == "join":
                    members.append(await broker.subscribe("g", handler, queue="g"))
                    group_exists = True
                elif op == "leave" and members:
                    await members.pop(arg % len(members)).unsubscribe()
                elif op == "publish":
                    for _ in range(arg):
                        if group_exists:
                            expected.append(sent)
                        await broker.publish("g", Message(str(sent).encode()))
                        sent += 1
                await asyncio.sleep(0)
            await broker.subscribe("g", handler, queue="g")  # someone is there at the end
            if expected:
                async with asyncio.timeout(15):
                    await done.wait()
            await quiesce()
        return expected, acked

    expected, acked = asyncio.run(scenario())
    assert acked == Counter(expected)


levels = st.lists(st.sampled_from(["a", "b", "cc"]), min_size=1, max_size=4)
pattern_levels = st.tuples(
    st.lists(st.sampled_from(["a", "b", "cc", "*"]), min_size=0, max_size=4), st.booleans()
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(topic_levels=levels, pattern=pattern_levels)
def test_wildcard_matching_agrees_with_nats_semantics(
    topic_levels: list[str], pattern: tuple[list[str], bool]
) -> None:
    import re

    head, many = pattern
    if not head and not many:
        head = ["*"]
    subject = ".".join(head + ([">"] if many else []))
    topic = ".".join(topic_levels)
    # The reference: '*' is one whole level, '>' one or more trailing levels.
    regex = r"\.".join([r"[^.]+" if level == "*" else re.escape(level) for level in head])
    if many:
        regex = (regex + r"\." if head else "") + r".+"
    expected = re.fullmatch(regex, topic) is not None

    async def delivered() -> bool:
        matched, sentinel = Inbox(), Inbox()
        async with memory(new_address("wildcards")) as broker:
            await broker.subscribe(subject, matched)
            await broker.subscribe(topic, sentinel)
            await broker.publish(topic, Message(b""))
            await sentinel.wait_for(1)
            await quiesce()
        return len(matched) == 1

    assert asyncio.run(delivered()) is expected, (subject, topic)


def test_a_bus_does_not_outlive_its_event_loop() -> None:
    """A subscription left behind by one ``asyncio.run`` (a test that forgot to disconnect)
    must not swallow the messages of the next one on the same address."""
    address = new_address("loops")

    async def forget_to_disconnect() -> None:
        broker = memory(address)
        await broker.connect()
        await broker.subscribe("t", Inbox(), queue="g")

    async def next_run() -> list[bytes]:
        inbox = Inbox()
        async with memory(address) as broker:
            await broker.subscribe("t", inbox, queue="g")
            for i in range(4):
                await broker.publish("t", Message(str(i).encode()))
            await inbox.wait_for(4)
        return inbox.bodies

    asyncio.run(forget_to_disconnect())
    assert asyncio.run(next_run()) == [b"0", b"1", b"2", b"3"]


@given(
    name=st.text(min_size=1, max_size=12),
    others=st.dictionaries(st.text(min_size=1, max_size=12), st.text(max_size=4), max_size=6),
)
def test_message_header_matches_the_casefolded_name_whatever_its_length(
    name: str, others: dict[str, str]
) -> None:
    # Message.header skips the fold of ASCII names of another length; it must find exactly
    # what comparing every name's casefold finds, non-ASCII names included ("STRASSE" and
    # "straße" fold alike, at different lengths).
    message = Message(b"", others)
    expected = others.get(name)
    if expected is None:
        expected = next((v for k, v in others.items() if k.casefold() == name.casefold()), None)
    assert message.header(name) == expected


def test_message_header_reads_names_case_insensitively() -> None:
    message = Message(b"", {"Micro-Id": "1", "STRASSE": "2", "ﬁle": "3"})
    assert message.header("micro-ID") == "1"
    assert message.header("straße") == "2"
    assert message.header("FILE") == "3"
    assert message.header("Micro-Error") is None
    assert message.header("Micro-Error", "none") == "none"
