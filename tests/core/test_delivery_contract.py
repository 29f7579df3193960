"""The delivery contract every broker shares: settlement, retries, giving up, dead letters.

A transport built on the toolkit only tells its transport hooks (``on_ack``,
``on_nack``, ``on_reject``) what ``Broker.subscribe``'s dispatcher decided. The
broker here records what it is told, so that every rule is checked at the
point a real transport would see it: a raw handler and a typed subscriber
(which settles in its own frame) must settle alike.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any
from unittest.mock import AsyncMock

import pytest
from google.protobuf import wrappers_pb2

import microbroker
from microbroker import (
    DEFAULT_RETRY,
    Capabilities,
    Delivery,
    GivenUp,
    Message,
    RetryPolicy,
    Settlement,
)
from microbroker.conformance import ErrorCatcher
from microbroker.transport import ATTEMPTS, ERROR, ID, ORIGINAL_ID, ORIGINAL_TOPIC


class _Sub(microbroker.Subscriber):
    @property
    def active(self) -> bool:
        return True

    async def unsubscribe(self) -> None:
        return None


class RecordingBroker(microbroker.Broker):
    """A transport that keeps what it is handed: sent messages, and each subscription's deliver."""

    name = "recording"

    def __init__(self, *, ack: bool = True, fail_sends: bool = False) -> None:
        super().__init__("recording")
        self.capabilities = Capabilities(ack=ack, queue_groups=True)
        self.fail_sends = fail_sends
        self.sent: list[tuple[str, Message]] = []
        self.delivers: list[microbroker.Handler] = []
        self._connected = False

    @property
    def connected(self) -> bool:
        return self._connected

    async def connect(self) -> None:
        self._connected = True

    async def disconnect(self) -> None:
        self._connected = False

    async def send(self, topic: str, message: Message, **options: Any) -> None:
        if self.fail_sends:
            raise microbroker.PublishError("the transport is down")
        self.sent.append((topic, message))

    async def receive(
        self,
        topic: str,
        deliver: microbroker.Handler,
        *,
        queue: str | None,
        auto_ack: bool,
        **options: Any,
    ) -> microbroker.Subscriber:
        self.delivers.append(deliver)
        return _Sub(topic, queue, auto_ack)


class Told(Delivery):
    """A delivery that records what the transport is told."""

    __slots__ = ("told",)

    def __init__(self, attempt: int = 1, body: bytes = b"x") -> None:
        super().__init__(
            "orders", Message(body, {ID: "original-id", "Tenant": "a"}), attempt=attempt
        )
        self.told: list[Any] = []

    async def on_ack(self) -> None:
        self.told.append("ack")

    async def on_nack(self, delay: float) -> None:
        self.told.append(("nack", delay))

    async def on_reject(self) -> None:
        self.told.append("reject")


class ToldLocally(Told):
    __slots__ = ()
    acks_locally = True


Way = Callable[[RecordingBroker, Any, bool, RetryPolicy | None], Awaitable[microbroker.Handler]]


async def _raw(
    broker: RecordingBroker, handler: Any, auto_ack: bool, retry: RetryPolicy | None
) -> microbroker.Handler:
    await broker.subscribe("orders", handler, auto_ack=auto_ack, retry=retry)
    return broker.delivers[-1]


async def _typed(
    broker: RecordingBroker, handler: Any, auto_ack: bool, retry: RetryPolicy | None
) -> microbroker.Handler:
    """``handler`` as a Service subscriber taking the raw Delivery, bound as a Server binds it."""

    async def subscriber(delivery: Delivery) -> None:
        await handler(delivery)

    service = microbroker.Service("contract", broker=broker)
    service.subscriber("orders", auto_ack=auto_ack, retry=retry)(subscriber)
    await service.server.start()
    return broker.delivers[-1]


ways = pytest.mark.parametrize("way", [_raw, _typed], ids=["raw", "typed"])


@pytest.fixture
async def broker() -> Any:
    async with RecordingBroker() as made:
        yield made


@pytest.fixture
def errors() -> Any:
    with ErrorCatcher() as catcher:
        yield catcher


async def _ok(delivery: Delivery) -> None:
    return None


async def _fails(delivery: Delivery) -> None:
    raise RuntimeError("boom")


async def _nacks(delivery: Delivery) -> None:
    await delivery.nack()


@ways
@pytest.mark.parametrize("kind", [Told, ToldLocally])
async def test_a_handler_that_returns_is_acked(
    broker: RecordingBroker, way: Way, kind: type[Told]
) -> None:
    deliver = await way(broker, _ok, True, None)
    delivery = kind()
    await deliver(delivery)
    assert delivery.state is Settlement.ACKED
    # A transport that acks locally is not awaited; the others are told once.
    assert delivery.told == ([] if kind.acks_locally else ["ack"])


@ways
async def test_without_auto_ack_nothing_is_settled(broker: RecordingBroker, way: Way) -> None:
    deliver = await way(broker, _ok, False, None)
    delivery = Told()
    await deliver(delivery)
    assert delivery.state is Settlement.PENDING
    assert delivery.told == []


@ways
@pytest.mark.parametrize("kind", [Told, ToldLocally])
async def test_a_handler_error_is_a_nack_with_the_policys_backoff(
    broker: RecordingBroker, way: Way, kind: type[Told], errors: Any
) -> None:
    deliver = await way(broker, _fails, True, None)
    delivery = kind(attempt=2)
    await deliver(delivery)
    assert delivery.nacked
    assert delivery.told == [("nack", DEFAULT_RETRY.delay(2))]
    assert [str(e) for e, _ in errors.errors] == ["boom"]


@ways
async def test_the_last_attempt_is_given_up_and_dead_lettered(
    broker: RecordingBroker, way: Way, errors: Any
) -> None:
    deliver = await way(broker, _fails, True, None)
    delivery = Told(attempt=DEFAULT_RETRY.max_attempts)
    await deliver(delivery)
    assert delivery.rejected
    assert delivery.told == ["reject"]
    ((topic, letter),) = broker.sent
    assert topic == "orders.dlq"
    assert letter.body == b"x"
    assert letter.headers["Tenant"] == "a", "the original headers travel with the dead letter"
    assert letter.headers[ORIGINAL_ID] == "original-id"
    assert letter.headers[ID] != "original-id", "a dead letter has an id of its own"
    assert letter.headers[ORIGINAL_TOPIC] == "orders"
    assert letter.headers[ATTEMPTS] == str(DEFAULT_RETRY.max_attempts)
    assert letter.headers[ERROR] == "boom"
    given_up = [e for e, _ in errors.of(GivenUp)]
    assert len(given_up) == 1
    assert given_up[0].dead_letter == "orders.dlq"
    assert given_up[0].attempts == DEFAULT_RETRY.max_attempts
    assert "dead-lettered to 'orders.dlq'" in str(given_up[0])


@ways
async def test_the_handlers_own_nack_stands_until_the_last_attempt(
    broker: RecordingBroker, way: Way
) -> None:
    deliver = await way(broker, _nacks, True, RetryPolicy(max_attempts=2, backoff=0.5))
    first, last = Told(attempt=1), Told(attempt=2)
    await deliver(first)
    await deliver(last)
    assert first.told == [("nack", 0.5)]
    assert last.rejected, "a nack of the last attempt gives the message up"
    assert [topic for topic, _ in broker.sent] == ["orders.dlq"]


async def test_an_undecodable_body_is_given_up_at_once(
    broker: RecordingBroker, errors: Any
) -> None:
    service = microbroker.Service("decoder", broker=broker)
    handled: list[str] = []

    @service.subscriber("greetings")
    async def on_greeting(msg: wrappers_pb2.StringValue) -> None:
        handled.append(msg.value)

    await service.server.start()
    delivery = Told()
    delivery.message = Message(b"\xffnot protobuf", {"Content-Type": "application/protobuf"})
    await broker.delivers[-1](delivery)
    assert handled == []
    assert delivery.rejected
    assert [topic for topic, _ in broker.sent] == ["orders.dlq"]
    assert len(errors.of(microbroker.DecodeError)) == 1
    assert errors.of(GivenUp)[0][0].attempts == 1


async def test_a_dead_letter_that_cannot_be_published_is_reported_and_the_message_rejected(
    errors: Any,
) -> None:
    async with RecordingBroker(fail_sends=True) as broker:
        deliver = await _raw(broker, _fails, True, RetryPolicy(max_attempts=1))
        delivery = Told()
        await deliver(delivery)
    assert delivery.rejected
    ((given_up, seen),) = errors.of(GivenUp)
    assert seen is delivery, "the hook gets the whole message, to keep it elsewhere"
    assert given_up.dead_letter is None
    assert isinstance(given_up.failure, microbroker.PublishError)
    assert "could not be published to 'orders.dlq'" in str(given_up)


async def test_without_a_dead_letter_topic_a_given_up_message_is_rejected(
    broker: RecordingBroker, errors: Any
) -> None:
    deliver = await _raw(broker, _fails, True, RetryPolicy(max_attempts=1, dead_letter=None))
    delivery = Told()
    await deliver(delivery)
    assert delivery.rejected
    assert broker.sent == []
    assert "rejected (its retry policy names no dead-letter topic)" in str(errors.of(GivenUp)[0][0])


async def test_an_explicit_reject_is_dead_lettered_without_an_error(
    broker: RecordingBroker, errors: Any
) -> None:
    async def rejects(delivery: Delivery) -> None:
        await delivery.reject()

    deliver = await _raw(broker, rejects, True, None)
    delivery = Told()
    await deliver(delivery)
    assert delivery.told == ["reject"]
    ((topic, letter),) = broker.sent
    assert (topic, letter.headers[ERROR]) == ("orders.dlq", "rejected")
    assert errors.errors == []


async def test_release_hands_the_message_back_even_on_its_last_attempt(
    broker: RecordingBroker,
) -> None:
    async def releases(delivery: Delivery) -> None:
        await delivery.release()

    deliver = await _raw(broker, releases, True, RetryPolicy(max_attempts=1))
    delivery = Told()
    await deliver(delivery)
    assert delivery.told == [("nack", 0.0)]
    assert broker.sent == []


async def test_without_redelivery_the_default_gives_up_at_the_first_failure(errors: Any) -> None:
    async with RecordingBroker(ack=False) as broker:
        deliver = await _raw(broker, _fails, True, None)
        delivery = Told()
        await deliver(delivery)
    assert delivery.rejected
    assert [topic for topic, _ in broker.sent] == ["orders.dlq"]
    assert errors.of(GivenUp)[0][0].attempts == 1


async def test_without_redelivery_a_named_policy_retries_in_this_process() -> None:
    attempts: list[int] = []

    async def flaky(delivery: Delivery) -> None:
        attempts.append(delivery.attempt)
        if delivery.attempt < 3:
            raise ConnectionError("the database blinked")

    async with RecordingBroker(ack=False) as broker:
        deliver = await _raw(broker, flaky, True, RetryPolicy(max_attempts=4, backoff=0.001))
        delivery = Told()
        await deliver(delivery)
    assert attempts == [1, 2, 3]
    assert delivery.acked
    assert broker.sent == []


@pytest.mark.parametrize("auto_ack", [True, False])
async def test_a_mock_handler_is_dispatched_like_any_other(
    broker: RecordingBroker, auto_ack: bool
) -> None:
    """A mock answers every attribute: it must still be called, and settled by the rules."""
    handler = AsyncMock(return_value=None)
    deliver = await _raw(broker, handler, auto_ack, None)
    delivery = Told()
    await deliver(delivery)
    handler.assert_awaited_once_with(delivery)
    assert delivery.acked is auto_ack


async def test_max_concurrency_runs_that_many_handlers_at_once(broker: RecordingBroker) -> None:
    running = 0
    most = 0
    release = asyncio.Event()

    async def slow(delivery: Delivery) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await release.wait()
        running -= 1

    await broker.subscribe("orders", slow, max_concurrency=3)
    deliver = broker.delivers[-1]
    deliveries = [Told() for _ in range(5)]
    handing = asyncio.gather(*(deliver(d) for d in deliveries))
    await asyncio.sleep(0.01)
    assert most == 3, "the fourth delivery must wait for a free slot"
    release.set()
    await handing
    for _ in range(100):  # the handlers' tasks settle as they end
        if all(d.acked for d in deliveries):
            break
        await asyncio.sleep(0)
    assert all(d.acked for d in deliveries)
    assert most == 3


async def test_overriding_publish_or_subscribe_is_refused_with_what_to_do() -> None:
    with pytest.raises(TypeError, match=r"implement send\(\) instead"):

        class Old(RecordingBroker):
            async def publish(self, topic: str, message: Message, **options: Any) -> None:  # type: ignore[override]
                return None
