"""When QoS 1/2 messages are acknowledged to the server: once settled, in order, within the window.

The first cases drive the broker's acknowledgement bookkeeping (``Acks``)
directly and read the bytes it writes; the others run against real Mosquitto
servers and watch what the server does about acknowledgements it has not had:
it sends no more than the receive window, and sends again what a session left
unacknowledged.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import pytest
from support.eventually import eventually
from support.mqtt_server import MosquittoServer

import microbroker
from microbroker_mqtt import MqttBroker
from microbroker_mqtt._delivery import Acks, ack_packet


def _acks(mqtt5: bool = True) -> tuple[Acks, list[bytes]]:
    written: list[bytes] = []
    acks = Acks(mqtt5)
    acks.write = written.append
    return acks, written


def _mids(written: list[bytes]) -> list[tuple[int, int]]:
    """``(command, packet id)`` of each acknowledgement in what was written."""
    data = b"".join(written)
    found = []
    while data:
        size = 2 + data[1]
        found.append((data[0], (data[2] << 8) | data[3]))
        data = data[size:]
    return found


def test_acknowledgements_go_out_in_the_order_the_messages_came() -> None:
    acks, written = _acks()
    first, second, third = (acks.received(mid, 1, "t", 1) for mid in (1, 2, 3))
    third.settle()
    second.settle()
    assert written == [], "nothing may pass the first, unsettled message"
    first.settle()
    assert _mids(written) == [(0x40, 1), (0x40, 2), (0x40, 3)]


def test_a_fanned_out_message_is_acknowledged_once_every_delivery_settled() -> None:
    acks, written = _acks()
    entry = acks.received(7, 1, "t", 3)
    entry.settle()
    entry.settle()
    assert written == []
    entry.settle()
    assert written == [ack_packet(7, 1, True)]


def test_a_message_handed_back_is_not_acknowledged_and_holds_nothing_back() -> None:
    acks, written = _acks(mqtt5=False)
    kept = acks.received(1, 1, "t", 1)
    after = acks.received(2, 2, "t", 1)
    after.settle()
    kept.release()
    assert written == [bytes((0x50, 2, 0, 2))], "the PUBREC of the second, not the first"
    assert acks.recorded == {2}, "a QoS 2 message is remembered until its PUBREL"
    acks.released(2)
    assert acks.recorded == set()


def test_after_a_lost_connection_a_message_sent_again_is_recognised_not_delivered_twice() -> None:
    acks, written = _acks()
    handled = acks.received(1, 1, "a", 1)
    queued = acks.received(2, 1, "b", 1)
    acks.lost()
    handled.settle()  # its handler finished after the connection was lost: nothing to write on
    assert written == []
    # The server resends both, DUP set, with the same ids.
    assert acks.take_back(1, "a", dup=True)
    assert _mids(written) == [(0x40, 1)], "settled while away: acknowledged when it comes back"
    assert acks.take_back(2, "b", dup=True)
    queued.settle()
    assert _mids(written) == [(0x40, 1), (0x40, 2)]
    assert not acks.take_back(3, "c", dup=True), "a message never seen is a new one"


def test_a_stale_id_used_for_another_message_is_that_other_message() -> None:
    acks, _ = _acks()
    acks.received(5, 1, "a", 1)
    acks.lost()
    assert not acks.take_back(5, "other", dup=True)
    assert not acks.stale
    acks.received(6, 1, "a", 1)
    acks.lost()
    acks.forget()  # the server kept no session: it sends nothing again
    assert not acks.take_back(6, "a", dup=True)


@pytest.mark.parametrize(("protocol", "window"), [("5", 5), ("3.1.1", 100)])
async def test_the_server_sends_no_more_than_the_window_of_unsettled_messages(
    mosquitto: MosquittoServer, protocol: str, window: int
) -> None:
    """Two subscriptions on one connection; one leaves its deliveries unsettled.

    Each message is acknowledged only once both settled it, so the server
    stops at the receive window (``receive_maximum`` under MQTT 5, the
    server's ``max_inflight_messages``, 100 in the tests, under 3.1.1); once
    the slow one acks, the rest flows.
    """
    topic = f"window/{uuid.uuid4().hex[:8]}"
    total = window * 3
    fast: list[int] = []
    held: list[microbroker.Delivery] = []

    async def quick(delivery: microbroker.Delivery) -> None:
        fast.append(int(delivery.message.body))

    async def hold(delivery: microbroker.Delivery) -> None:
        held.append(delivery)

    options = {"receive_maximum": window} if protocol == "5" else {}
    async with (
        MqttBroker(mosquitto.url, protocol=protocol, **options) as sub,
        MqttBroker(mosquitto.url, protocol=protocol) as pub,
    ):
        await sub.subscribe(topic, quick)
        await sub.subscribe(topic, hold, auto_ack=False)
        for n in range(total):
            await pub.publish(topic, microbroker.Message(b"%d" % n), confirm=True)
        await eventually(lambda: len(fast) >= window, f"the first {window} deliveries")
        await asyncio.sleep(0.5)  # room for a message past the window to show up
        assert len(fast) == window, f"{len(fast)} delivered with {window} unacknowledged"
        assert len(held) == window
        acked = 0
        while acked < total:  # the slow one acks what it has; more comes
            await eventually(_more_than(held, acked), f"delivery {acked + 1} to the slow one")
            for delivery in held[acked:]:
                await delivery.ack()
                acked += 1
        await eventually(lambda: len(fast) >= total, f"all {total}")
    assert fast == list(range(total))


def _more_than(items: list[microbroker.Delivery], count: int) -> Callable[[], bool]:
    return lambda: len(items) > count


async def test_what_a_disconnect_leaves_unhandled_comes_back_to_the_resumed_session(
    new_mosquitto: Callable[..., MosquittoServer],
) -> None:
    """A slow subscriber disconnects with a backlog (``drain_timeout`` short): what it had
    not handled was not acknowledged, and a new broker with its client id gets it."""
    server = new_mosquitto()
    client_id = f"backlog-{uuid.uuid4().hex[:8]}"
    topic = f"backlog/{uuid.uuid4().hex[:8]}"
    total = 100
    first: list[int] = []
    second: list[int] = []

    async def slow(delivery: microbroker.Delivery) -> None:
        await asyncio.sleep(0.02)
        first.append(int(delivery.message.body))

    async def quick(delivery: microbroker.Delivery) -> None:
        second.append(int(delivery.message.body))

    sub = MqttBroker(server.url, client_id=client_id, drain_timeout=0.2)
    await sub.connect()
    await sub.subscribe(topic, slow)
    async with MqttBroker(server.url) as pub:
        for n in range(total):
            await pub.publish(topic, microbroker.Message(b"%d" % n), confirm=True)
        await eventually(lambda: len(first) >= 5, "some handled")
        await sub.disconnect()
        assert len(first) < total, "the disconnect must leave a backlog"
        async with MqttBroker(server.url, client_id=client_id) as back:
            await back.subscribe(topic, quick)
            await eventually(lambda: set(first) | set(second) >= set(range(total)), "the rest")
    print(f"{len(first)} handled before the disconnect, {len(second)} after it")
    assert set(second) >= set(range(total)) - set(first)
