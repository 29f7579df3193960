"""Faults on a real Mosquitto: SIGKILL and restart mid-stream, a SIGSTOP stall, both at QoS 1.

The servers here keep their sessions in a persistence file written after every
change (``durable=True``), so that what Mosquitto acknowledged survives even a
SIGKILL, with one exception of Mosquitto's own (2.0.11, Debian): under MQTT
3.1.1 a SIGKILL can lose the one message it was about to deliver to the
subscriber, acknowledged to the publisher about a thousand messages earlier.
The subscriber's client never receives it (the test records every PUBLISH gmqtt
hands over and fails if the lost message is among them) and the restarted
server does not resend it, while it does resend the ones after it. Seen 7 times
in about 180 runs, always under 3.1.1, always that message. Clients use stable
ids and persistent sessions: the publisher resends what the server had not
acknowledged, the server resends to the subscriber what it had not delivered.
Duplicates are allowed at QoS 1 and are counted.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from support.eventually import eventually
from support.faults import RetryingPublisher
from support.mqtt_server import MosquittoServer

import microbroker
from microbroker_mqtt import MqttBroker
from microbroker_mqtt._envelope import decode

pytestmark = pytest.mark.slow

OPTIONS = {"qos": 1, "reconnect_delay": 0.2, "publish_timeout": 30.0}


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_qos1_messages_survive_mosquitto_killed_mid_stream(
    new_mosquitto: Callable[..., MosquittoServer], protocol: str
) -> None:
    server = new_mosquitto(durable=True)
    total = 10_000
    counts: Counter[int] = Counter()

    async def handler(delivery: microbroker.Delivery) -> None:
        counts[int(delivery.message.body)] += 1

    run = uuid.uuid4().hex[:8]
    topic = f"orders/{run}"
    sub = MqttBroker(server.url, client_id=f"sub-{run}", protocol=protocol, **OPTIONS)
    pub = MqttBroker(server.url, client_id=f"pub-{run}", protocol=protocol, **OPTIONS)
    # Every message the client library hands the subscriber's broker, before any of the
    # broker's own work: a message lost after this point would be microbroker's to answer for.
    handed_over: set[int] = set()
    on_publish = sub._on_publish

    def recording(t: str, payload: bytes, qos: int, mid: int, properties: Any) -> None:
        pairs = properties.get("user_property")
        handed_over.add(int(decode(payload, pairs, sub.settings.uses_envelope).body))
        on_publish(t, payload, qos, mid, properties)

    sub._on_publish = recording  # type: ignore[method-assign]
    await sub.connect()
    await pub.connect()
    publisher = RetryingPublisher(pub, topic, concurrency=1, attempts=100)
    try:
        await sub.subscribe(topic, handler)
        publishing = asyncio.create_task(publisher.publish_in_order(range(total)))
        await eventually(lambda: len(counts) >= 3000, "deliveries before the kill", 60)
        await asyncio.to_thread(server.kill)
        killed_at = len(counts)
        published_at_kill = publisher.done
        await asyncio.sleep(0.5)
        await asyncio.to_thread(server.start)

        def state() -> str:
            missing = sorted(set(range(total)) - set(counts))
            return (
                f"published {publisher.done}, {publisher.retries} retried (last error "
                f"{publisher.last_error!r}), {len(counts)} delivered, {killed_at} delivered and "
                f"{published_at_kill} published at the kill, missing {missing[:10]}, "
                f"publisher connected {pub.connected}, "
                f"subscriber connected {sub.connected}"
            )

        # The one message Mosquitto may lose (see the module's docstring): the next one the
        # subscriber was to get when the server was killed.
        at_risk = {killed_at, killed_at + 1}
        try:
            await asyncio.wait_for(publishing, 120)
            await eventually(
                lambda: set(range(total)) - set(counts) <= at_risk, f"delivery of all {total}", 120
            )
            await eventually(lambda: len(counts) >= total, "the last one", 2.0)
        except TimeoutError as exc:
            raise AssertionError(
                f"publishing did not end within 120s: {state()}\n"
                f"mosquitto's log:\n{server.log(3000)}"
            ) from exc
        except AssertionError as exc:
            if not set(range(total)) - set(counts) <= at_risk:
                raise AssertionError(
                    f"{exc}: {state()}\nmosquitto's log:\n{server.log(3000)}"
                ) from exc
        missing = set(range(total)) - set(counts)
        duplicates = sum(c - 1 for c in counts.values())
        print(
            f"mosquitto SIGKILL (MQTT {protocol}): {total} published, {killed_at} delivered "
            f"at the kill, {len(counts)} distinct delivered, {duplicates} duplicates, "
            f"{publisher.retries} publishes retried; lost by Mosquitto at the kill: "
            f"{sorted(missing) or 'none'}"
        )
        assert killed_at < total, "the kill must happen mid-stream"
        assert len(missing) <= 1, f"{len(missing)} lost: {state()}"
        assert missing <= at_risk, f"lost a message other than the one at risk: {state()}"
        assert not missing & handed_over, f"the client got {missing} and lost it: {state()}"
        assert sub.connected
        assert pub.connected
    finally:
        await pub.disconnect()
        await sub.disconnect()


async def test_nothing_lost_across_a_network_stall(
    new_mosquitto: Callable[..., MosquittoServer],
) -> None:
    """The server frozen (SIGSTOP) for three seconds mid-stream, then resumed (SIGCONT)."""
    server = new_mosquitto(durable=True)
    total = 3_000
    counts: Counter[int] = Counter()

    async def handler(delivery: microbroker.Delivery) -> None:
        counts[int(delivery.message.body)] += 1

    run = uuid.uuid4().hex[:8]
    topic = f"stall/{run}"
    sub = MqttBroker(server.url, client_id=f"sub-{run}", **OPTIONS)
    pub = MqttBroker(server.url, client_id=f"pub-{run}", **OPTIONS)
    await sub.connect()
    await pub.connect()
    publisher = RetryingPublisher(pub, topic, concurrency=1, attempts=100)
    try:
        await sub.subscribe(topic, handler)
        publishing = asyncio.create_task(publisher.publish_in_order(range(total)))
        await eventually(lambda: len(counts) >= 500, "deliveries before the stall", 60)
        server.pause()
        try:
            await asyncio.sleep(3.0)
            stalled_at = len(counts)
        finally:
            server.resume()
        await asyncio.wait_for(publishing, 120)
        await eventually(lambda: len(counts) >= total, f"delivery of all {total} messages", 60)
        duplicates = sum(c - 1 for c in counts.values())
        print(
            f"mosquitto SIGSTOP 3 s: {total} published, {stalled_at} delivered during the "
            f"stall, {len(counts)} distinct delivered, {duplicates} duplicates"
        )
        assert stalled_at < total, "the stall must happen mid-stream"
        assert set(counts) == set(range(total))
    finally:
        await pub.disconnect()
        await sub.disconnect()
