"""Retry policies and dead letters, on the memory broker (with ack) and on a broker without ack."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest
from google.protobuf import wrappers_pb2

import microbroker
from microbroker import Capabilities, Context, Delivery, Message, RetryPolicy
from microbroker.brokers.memory import MemoryBroker

_bus = itertools.count()


class NoAckBroker(MemoryBroker):
    """The memory broker declared without acknowledgement, as core NATS or MQTT QoS 0 are."""

    capabilities = Capabilities(queue_groups=True, ack=False)


class Errors:
    @microbroker.hookimpl
    def on_error(self, error: BaseException, delivery: Delivery | None) -> None:
        self.seen.append(error)
        if isinstance(error, microbroker.GivenUp) and delivery is not None:
            self.deliveries.append(delivery)

    def __init__(self) -> None:
        self.seen: list[BaseException] = []
        self.deliveries: list[Delivery] = []


@pytest.fixture
def errors() -> Any:
    catcher = Errors()
    name = microbroker.register_plugin(catcher, name=f"retry-errors-{id(catcher)}")
    yield catcher
    microbroker.unregister_plugin(name)


@pytest.fixture
def address() -> str:
    return f"retry-{next(_bus)}"


async def collect(broker: microbroker.Broker, topic: str) -> asyncio.Queue[Delivery]:
    queue: asyncio.Queue[Delivery] = asyncio.Queue()

    async def handler(delivery: Delivery) -> None:
        await queue.put(delivery)

    await broker.subscribe(topic, handler)
    return queue


POLICY = RetryPolicy(max_attempts=3, backoff=0.01, max_backoff=0.05)


@pytest.mark.parametrize("broker_cls", [MemoryBroker, NoAckBroker], ids=["ack", "no-ack"])
async def test_a_message_that_keeps_failing_is_dead_lettered_after_max_attempts(
    broker_cls: type[MemoryBroker], address: str, errors: Errors
) -> None:
    async with broker_cls(address) as broker:
        dead = await collect(broker, "orders.dlq")
        attempts: list[int] = []

        async def failing(delivery: Delivery) -> None:
            attempts.append(delivery.attempt)
            raise ValueError("cannot bill this order")

        await broker.subscribe("orders", failing, retry=POLICY)
        await broker.publish("orders", Message(b"order-1", {"Tenant": "a"}))
        letter = await asyncio.wait_for(dead.get(), 5)
        await asyncio.sleep(0.2)
    assert attempts == [1, 2, 3], "exactly max_attempts deliveries, then the dead letter"
    assert letter.message.body == b"order-1"
    headers = letter.message.headers
    assert headers["Tenant"] == "a", "the original headers travel with the dead letter"
    assert headers["Micro-Original-Topic"] == "orders"
    assert headers["Micro-Attempts"] == "3"
    assert headers["Micro-Error"] == "cannot bill this order"
    assert headers["Micro-Error-Type"] == "builtins.ValueError"
    assert headers["Micro-ID"], "a dead letter has an id of its own"
    assert "Micro-Original-ID" not in headers, "the original (a raw publish) had none"
    assert dead.empty(), "one dead letter per message"
    assert sum(isinstance(e, ValueError) for e in errors.seen) == 3
    (given_up,) = [e for e in errors.seen if isinstance(e, microbroker.GivenUp)]
    assert (given_up.attempts, given_up.dead_letter) == (3, "orders.dlq")


@pytest.mark.parametrize("broker_cls", [MemoryBroker, NoAckBroker], ids=["ack", "no-ack"])
async def test_a_message_that_succeeds_on_a_retry_is_not_dead_lettered(
    broker_cls: type[MemoryBroker], address: str
) -> None:
    async with broker_cls(address) as broker:
        dead = await collect(broker, "jobs.dlq")
        done = asyncio.Event()
        attempts: list[int] = []

        async def flaky(delivery: Delivery) -> None:
            attempts.append(delivery.attempt)
            if delivery.attempt < 3:
                raise ConnectionError("the database blinked")
            done.set()

        await broker.subscribe("jobs", flaky, retry=POLICY)
        await broker.publish("jobs", Message(b"job"))
        await asyncio.wait_for(done.wait(), 5)
        await asyncio.sleep(0.2)
    assert attempts == [1, 2, 3]
    assert dead.empty()


async def test_an_undecodable_message_is_dead_lettered_at_once(
    address: str, errors: Errors
) -> None:
    broker = MemoryBroker(address)
    service = microbroker.Service("decoder", broker=broker)
    handled: list[str] = []

    @service.subscriber("greetings", retry=POLICY)
    async def on_greeting(msg: wrappers_pb2.StringValue, ctx: Context) -> None:
        handled.append(msg.value)

    async with service:
        dead = await collect(broker, "greetings.dlq")
        await broker.publish(
            "greetings", Message(b"\xffgarbage", {"Content-Type": "application/protobuf"})
        )
        await service.event("greetings").publish(wrappers_pb2.StringValue(value="hi"))
        letter = await asyncio.wait_for(dead.get(), 5)
        await asyncio.sleep(0.1)
    assert handled == ["hi"], "the good message after the bad one is handled"
    assert letter.message.body == b"\xffgarbage"
    assert letter.message.headers["Micro-Attempts"] == "1", "no retry for a permanent error"
    assert letter.message.headers["Micro-Error-Type"].endswith(".DecodeError")
    assert any(isinstance(e, microbroker.DecodeError) for e in errors.seen)


async def test_the_dead_letter_topic_is_configurable_and_can_be_turned_off(
    address: str, errors: Errors
) -> None:
    async with MemoryBroker(address) as broker:
        custom = await collect(broker, "graveyard.payments")
        default = await collect(broker, "payments.dlq")

        async def failing(delivery: Delivery) -> None:
            raise RuntimeError("no")

        await broker.subscribe(
            "payments", failing, retry=RetryPolicy(max_attempts=1, dead_letter="graveyard.<topic>")
        )
        await broker.subscribe(
            "refunds", failing, retry=RetryPolicy(max_attempts=1, dead_letter=None)
        )
        await broker.publish("payments", Message(b"p"))
        await broker.publish("refunds", Message(b"r"))
        letter = await asyncio.wait_for(custom.get(), 5)
        await asyncio.sleep(0.1)
    assert letter.message.body == b"p"
    assert default.empty()
    reported = [e for e in errors.seen if isinstance(e, RuntimeError)]
    assert len(reported) == 2, "each failure is reported"
    given_up = {e.topic: e for e in errors.seen if isinstance(e, microbroker.GivenUp)}
    assert given_up["payments"].dead_letter == "graveyard.payments"
    assert given_up["refunds"].dead_letter is None, "given up without a dead letter: reported"


async def test_a_dead_letter_that_cannot_be_published_is_reported_with_the_message(
    address: str, errors: Errors
) -> None:
    """A poison message never blocks its subscription: rejected anyway, and the hook has it all."""
    async with MemoryBroker(address) as broker:
        handled = asyncio.Event()

        async def failing(delivery: Delivery) -> None:
            if delivery.message.body == b"next":
                handled.set()
                return
            raise RuntimeError("no")

        # An empty dead-letter topic cannot be published to.
        policy = RetryPolicy(max_attempts=1, dead_letter="")
        await broker.subscribe("lost", failing, retry=policy)
        await broker.publish("lost", Message(b"keep me"))
        await broker.publish("lost", Message(b"next"))
        await asyncio.wait_for(handled.wait(), 5)
    (given_up,) = [e for e in errors.seen if isinstance(e, microbroker.GivenUp)]
    assert given_up.dead_letter is None
    assert isinstance(given_up.failure, microbroker.InvalidTopic)
    assert errors.deliveries[-1].message.body == b"keep me"


def test_policy_backoff_grows_and_is_capped() -> None:
    policy = RetryPolicy(max_attempts=10, backoff=0.5, multiplier=2, max_backoff=3)
    assert [policy.delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError, match="multiplier"):
        RetryPolicy(multiplier=0.5)
