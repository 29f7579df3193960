"""MQTT 5 on mosquitto, QoS 1 throughout: raw gmqtt, microbroker's MqttBroker, FastStream.

The server is :class:`tests.support.mqtt_server.MosquittoServer`, as in the
tests. Queue groups are MQTT 5 shared subscriptions (``$share/<group>/<topic>``).
The raw case keeps at most ``WINDOW`` publishes unacknowledged, as the broker does.
"""

from __future__ import annotations

import asyncio
import uuid
from contextlib import AbstractContextManager
from typing import Any

import gmqtt  # type: ignore[import-untyped]
from gmqtt.mqtt.constants import MQTTv50  # type: ignore[import-untyped]
from gmqtt.storage import PersistentStorage  # type: ignore[import-untyped]

from microbroker_mqtt import MqttBroker

from . import Hit, Publish, Transport, Variant
from .common import FastStreamVariant, MicrobrokerVariant

HOST = "127.0.0.1"
QOS = 1
WINDOW = 96  # under MosquittoServer's receive maximum (max_inflight_messages 100)


class _Window(PersistentStorage):  # type: ignore[misc]
    """gmqtt's in-flight store, with a wake-up when a publish is acknowledged."""

    def __init__(self) -> None:
        super().__init__()
        self.room = asyncio.Event()

    def remove_message_by_mid(self, mid: int) -> None:
        super().remove_message_by_mid(mid)
        self.room.set()


class RawMqtt(Variant):
    kind = "raw"
    separator = "/"

    def __init__(self, port: int) -> None:
        self.port = port

    async def open(self) -> None:
        self.store = _Window()
        tag = uuid.uuid4().hex[:8]
        self.pub = gmqtt.Client(f"bench-pub-{tag}", persistent_storage=self.store)
        self.sub = gmqtt.Client(f"bench-sub-{tag}")
        self.routes: dict[str, list[Hit]] = {}
        self.acked = asyncio.Event()
        self.expected = 0
        self.count = 0
        connack: dict[str, Any] = {}
        self.pub.on_connect = lambda client, flags, rc, properties: connack.update(properties)
        self.sub.on_message = self._on_message
        self.sub.on_subscribe = self._on_subscribe
        await self.pub.connect(HOST, self.port, version=MQTTv50)
        self.window = min(WINDOW, int(connack.get("receive_maximum", [WINDOW + 4])[0]) - 4)
        await self.sub.connect(HOST, self.port, version=MQTTv50)

    def _on_subscribe(self, *args: Any) -> None:
        self.count += 1
        if self.count >= self.expected:
            self.acked.set()

    def _on_message(self, client: Any, topic: str, payload: bytes, qos: int, props: Any) -> int:
        for hit in self.routes[topic]:
            hit()
        return 0

    async def subscribe(self, topic: str, queue: str | None, hit: Hit) -> None:
        # One gmqtt client gets one copy per matching subscription: a fan-out of ten on one
        # connection is ten subscriptions with distinct subscription identifiers, which
        # mosquitto delivers as one message; count each local route instead.
        routes = self.routes.setdefault(topic, [])
        if routes and queue:
            return  # one member of the shared group per connection gets each message once
        routes.append(hit)
        if len(routes) == 1:
            # One SUBSCRIBE in flight at a time: gmqtt's packet ids are bounded by the
            # server's receive maximum.
            self.expected += 1
            self.acked.clear()
            self.sub.subscribe(f"$share/{queue}/{topic}" if queue else topic, qos=QOS)
            await asyncio.wait_for(self.acked.wait(), 10)

    def publisher(self, topic: str, body: bytes) -> Publish:
        publish = self.pub.publish
        pending = self.store._messages
        room = self.store.room
        window = self.window

        async def send() -> None:
            while len(pending) >= window:
                room.clear()
                await room.wait()
            publish(gmqtt.Message(topic, body, qos=QOS))

        return send

    async def close(self) -> None:
        await self.pub.disconnect()
        await self.sub.disconnect()


def _server() -> AbstractContextManager[Any]:
    from support.mqtt_server import MosquittoServer

    return MosquittoServer(persistence=False)


def _faststream(port: int) -> FastStreamVariant:
    import zmqtt
    from faststream.mqtt import MQTTBroker

    def make() -> Any:
        return MQTTBroker(f"mqtt://{HOST}:{port}", logger=None)

    qos = zmqtt.QoS.AT_LEAST_ONCE
    variant = FastStreamVariant(
        make,
        subscriber_options=lambda topic, queue: {"qos": qos, "shared": queue},
        publish_options=lambda topic: {"qos": qos},
        broker_per_subscriber=True,
    )
    variant.separator = "/"
    return variant


def transport() -> Transport:
    def micro(server: Any) -> Variant:
        url = f"mqtt://{HOST}:{server.port}"
        return MicrobrokerVariant(lambda: MqttBroker(url, qos=QOS, max_inflight=WINDOW), "/")

    return Transport(
        "mqtt",
        {
            "raw": lambda server: RawMqtt(server.port),
            "microbroker": micro,
            "faststream": lambda server: _faststream(server.port),
        },
        _server,
        [
            f"QoS {QOS} everywhere; at most {WINDOW} unacknowledged publishes"
            " for raw and microbroker"
        ],
    )
