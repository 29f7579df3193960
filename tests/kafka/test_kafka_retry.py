"""A poison message on Kafka: given up by the core's default policy, and the commit moves past it.

Before the port to the transport toolkit a record whose handler always failed
was delivered for ever (19 times in about 10 s, then on and on), the group's
committed offset stayed behind it, so a restarted member got thousands of
handled messages again, and giving up (``max_deliver``) was a log line only.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter

from kafka_helpers import FAST, committed_to, eventually
from support.kafka_server import KafkaServer

from microbroker import DEFAULT_RETRY, Delivery, GivenUp, Message
from microbroker.conformance import ErrorCatcher
from microbroker.transport import ATTEMPTS, ORIGINAL_TOPIC
from microbroker_kafka import KafkaBroker

BEFORE, AFTER = 2000, 1000


async def test_a_poison_message_is_given_up_and_a_restarted_member_starts_after_it(
    kafka_server: KafkaServer, kafka_client: str
) -> None:
    """One partition: 2,000 good records, a poison one, 1,000 good ones, for one group member.

    The poison record is tried ``DEFAULT_RETRY.max_attempts`` times, dead-lettered,
    and reported to ``on_error`` as ``GivenUp``; the committed offset then moves to
    the end of the partition. A new member of the group (the service restarted)
    gets only what is published after, not the 3,000 handled ones again.
    """
    topic, group = f"poison.{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    total = BEFORE + 1 + AFTER
    attempts: Counter[bytes] = Counter()
    dead: list[Delivery] = []

    async def handler(delivery: Delivery) -> None:
        attempts[delivery.body] += 1
        if delivery.body == b"poison":
            raise RuntimeError("this record never works")

    async def on_dead(delivery: Delivery) -> None:
        dead.append(delivery)

    # offset_reset="earliest" (FAST): a member that found no commit past the handled
    # records would read all 3,001 again, so the restart below would show it.
    options = {**FAST, "partitions": 1, "client": kafka_client}
    with ErrorCatcher() as errors:
        async with KafkaBroker(kafka_server.address, **options) as pub:
            sub = KafkaBroker(kafka_server.address, **options)
            await sub.connect()
            try:
                await pub.subscribe(f"{topic}.dlq", on_dead)
                await sub.subscribe(topic, handler, queue=group)
                bodies = [b"%d" % n for n in range(BEFORE)]
                bodies += [b"poison"] + [b"%d" % n for n in range(BEFORE, BEFORE + AFTER)]
                for body in bodies:
                    await pub.publish(topic, Message(body))
                await errors.wait_for(GivenUp, 60)
                await eventually(lambda: len(dead) == 1, 30, "the dead letter")
                await eventually(lambda: len(attempts) == total, 30, "every good record handled")
                await committed_to(kafka_server.address, group, topic, {0: total}, 30)
            finally:
                await sub.disconnect()  # the service stops

            # The service starts again: a new member of the same group.
            again: list[bytes] = []

            async def restarted(delivery: Delivery) -> None:
                again.append(delivery.body)

            async with KafkaBroker(kafka_server.address, **options) as heir:
                await heir.subscribe(topic, restarted, queue=group)
                await pub.publish(topic, Message(b"after the restart"))
                await eventually(lambda: b"after the restart" in again, 30, "the new record")
                await asyncio.sleep(0.5)  # several fetches: nothing else arrives
    assert again == [b"after the restart"], (
        f"the restarted member got {len(again)} records: {again[:5]}..."
    )
    assert attempts[b"poison"] == DEFAULT_RETRY.max_attempts
    assert all(attempts[b"%d" % n] == 1 for n in range(BEFORE + AFTER))
    (given_up, delivery), *more = errors.of(GivenUp)
    assert not more, "one give-up for one poison record"
    assert given_up.attempts == DEFAULT_RETRY.max_attempts
    assert given_up.dead_letter == f"{topic}.dlq"
    assert delivery is not None
    assert delivery.rejected
    letter = dead[0]
    assert letter.body == b"poison"
    assert letter.header(ORIGINAL_TOPIC) == topic
    assert letter.header(ATTEMPTS) == str(DEFAULT_RETRY.max_attempts)
    failures = [e for e, _ in errors.errors if isinstance(e, RuntimeError)]
    assert len(failures) == DEFAULT_RETRY.max_attempts, "each failed attempt reaches on_error"
