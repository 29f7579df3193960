"""Which offset a group may commit: the longest settled run, read from the deliveries.

An ack is only a delivery's state (``KafkaDelivery.acks_locally``): the
partition's tracker (``Partition.advance``) reads the states when a commit or
the end of a fetched batch asks. These tests drive real ``KafkaDelivery``
objects through the core's settlement calls (``ack``, ``nack``, ``reject``,
and the dispatcher's auto-ack) in any order, and hold the tracker to the rule
every commit relies on: never past a record that may still be delivered again.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from microbroker import Message
from microbroker_kafka._delivery import KafkaDelivery
from microbroker_kafka._offsets import Partition

START = 100


def _now(call: Coroutine[Any, Any, None]) -> None:
    """Run a settlement call that does not wait (none of these does) to its end."""
    try:
        call.send(None)
    except StopIteration:
        return
    raise AssertionError("the settlement call waited")


class _Subscription:
    """What a delivery calls on nack: the subscription's redelivery (here: made at once)."""

    def __init__(self) -> None:
        self.redeliveries: list[KafkaDelivery] = []

    def redeliver(self, delivery: KafkaDelivery, delay: float) -> None:
        self.redeliveries.append(delivery.redelivery())


def _deliveries(part: Partition, sub: _Subscription, count: int) -> list[KafkaDelivery]:
    made = []
    for i in range(count):
        delivery = KafkaDelivery(
            "t",
            b"body %d" % i,
            [("Content-Type", b"text/plain")],
            None,
            "q",
            1,
            sub,  # type: ignore[arg-type]
            part,
            0,
            START + i,
            None,
        )
        part.pending.append(delivery)
        part.next = START + i + 1
        made.append(delivery)
    return made


def test_acks_in_order_move_the_commit_record_by_record() -> None:
    part, sub = Partition(START), _Subscription()
    first, second, third = _deliveries(part, sub, 3)
    assert part.safe == START
    _now(first.ack())
    assert part.safe == START + 1
    _now(third.ack())
    assert part.safe == START + 1  # the second is still in its handler
    _now(second.ack())
    assert part.safe == START + 3
    assert not part.pending


def test_an_auto_ack_recorded_by_the_dispatcher_alone_settles_the_record() -> None:
    """The dispatcher records an auto-ack without calling ack() (acks_locally)."""
    part, sub = Partition(START), _Subscription()
    (delivery,) = _deliveries(part, sub, 1)
    assert KafkaDelivery.acks_locally
    delivery._state = 1  # what core's dispatcher does for an acks_locally delivery
    assert delivery.acked
    assert part.safe == START + 1


def test_a_nacked_record_holds_the_commit_until_its_redelivery_settles() -> None:
    part, sub = Partition(START), _Subscription()
    first, second = _deliveries(part, sub, 2)
    _now(first.nack())
    _now(second.ack())
    assert part.safe == START  # the first waits for its redelivery
    (again,) = sub.redeliveries
    assert again.offset == START
    assert again.attempt == 2
    assert again.message == Message(b"body 0", {"Content-Type": "text/plain"})
    _now(again.nack())
    assert part.safe == START
    _now(sub.redeliveries[-1].ack())
    assert part.safe == START + 2


def test_a_record_given_up_is_settled_only_once_on_reject_ran() -> None:
    """The core marks a delivery rejected before its dead letter is published; the commit
    passes it only once ``on_reject`` ran (after the dead letter), or a crash between
    the two would lose the message."""
    part, sub = Partition(START), _Subscription()
    (delivery,) = _deliveries(part, sub, 1)
    delivery._state = 3  # core's give_up(), while it publishes the dead letter
    assert part.safe == START
    _now(delivery.on_reject())
    assert part.safe == START + 1


# Each record's fate: acked, given up, or nacked (1-3 times) and then acked or given up.
_FATE = st.tuples(st.integers(0, 3), st.sampled_from(["ack", "reject"]))


@settings(max_examples=200, deadline=None)
@given(
    fates=st.lists(_FATE, min_size=1, max_size=12),
    order=st.randoms(use_true_random=False),
    checks=st.lists(st.booleans(), min_size=64, max_size=64),
)
def test_the_commit_never_passes_a_record_that_may_be_delivered_again(
    fates: list[tuple[int, str]], order: object, checks: list[bool]
) -> None:
    """Settlements in any order, the tracker read at any point between them: its offset is
    always the one after the longest run of records settled for good from the start."""
    part, sub = Partition(START), _Subscription()
    deliveries = _deliveries(part, sub, len(fates))
    # One step per settlement call: each record's nacks, then its last call, in its order.
    steps = [i for i, (nacks, _) in enumerate(fates) for _ in range(nacks + 1)]
    order.shuffle(steps)  # type: ignore[attr-defined]
    current = list(deliveries)
    calls = [0] * len(fates)
    done = [False] * len(fates)
    for n, i in enumerate(steps):
        nacks, last = fates[i]
        delivery = current[i]
        if calls[i] < nacks:
            _now(delivery.nack())
            current[i] = sub.redeliveries[-1]
        elif last == "ack":
            _now(delivery.ack())
            done[i] = True
        else:
            _now(delivery.reject())
            done[i] = True
        calls[i] += 1
        if checks[n % len(checks)]:
            run = next((j for j, d in enumerate(done) if not d), len(done))
            assert part.safe == START + run
    assert all(done)
    assert part.safe == START + len(fates)
    assert not part.pending
