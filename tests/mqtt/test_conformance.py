"""The conformance suite against a real Mosquitto, under MQTT 5 and under MQTT 3.1.1."""

from __future__ import annotations

import pytest
from support.mqtt_server import MosquittoServer

from microbroker.conformance import BrokerConformance, BrokerFactory, RestartServer
from microbroker_mqtt import MqttBroker


class TestMqtt5(BrokerConformance):
    """MQTT 5: headers as user properties, shared subscriptions, subscription identifiers."""

    @pytest.fixture
    def broker_factory(self, mosquitto: MosquittoServer) -> BrokerFactory:
        return lambda: MqttBroker(mosquitto.url)

    @pytest.fixture
    def restart_server(self, mosquitto: MosquittoServer) -> RestartServer:
        return mosquitto.restart


class TestMqtt311(BrokerConformance):
    """MQTT 3.1.1: headers and body in go-micro's JSON envelope, topics matched locally."""

    @pytest.fixture
    def broker_factory(self, mosquitto: MosquittoServer) -> BrokerFactory:
        return lambda: MqttBroker(mosquitto.url, protocol="3.1.1")

    @pytest.fixture
    def restart_server(self, mosquitto: MosquittoServer) -> RestartServer:
        return mosquitto.restart
