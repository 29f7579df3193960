"""microbroker-mqtt: the MQTT broker for microbroker (MQTT 5 and 3.1.1, on gmqtt).

Select it by name (``MICRO_BROKER=mqtt``, ``MICRO_BROKER_ADDRESS=mqtt://host:1883``)
or make one directly::

    from microbroker_mqtt import MqttBroker

    async with MqttBroker("mqtt://127.0.0.1:1883", client_id="billing-1") as broker:
        ...
"""

from .broker import WILDCARDS, MqttBroker, MqttSubscriber, check_filter
from .errors import MqttAuthError, MqttConnectError, MqttError, SubscribeError
from .options import MqttOptions

__version__ = "0.1.0"

__all__ = [
    "WILDCARDS",
    "MqttAuthError",
    "MqttBroker",
    "MqttConnectError",
    "MqttError",
    "MqttOptions",
    "MqttSubscriber",
    "SubscribeError",
    "check_filter",
]
