"""microbroker-kafka: the Kafka broker for microbroker, on aiokafka.

Install it next to ``microbroker`` and select it by name::

    MICRO_BROKER=kafka MICRO_BROKER_ADDRESS=10.0.0.1:9092,10.0.0.2:9092 MICRO_KAFKA_PARTITIONS=8

or ``microbroker.get_broker("kafka", address=..., partitions=8)``. Every
option is also read from ``MICRO_KAFKA_<OPTION>`` when it is not given.
"""

from __future__ import annotations

from ._delivery import KafkaDelivery
from ._subscriber import KafkaSubscriber
from .broker import KafkaBroker, check_kafka_topic
from .errors import KafkaConnectError, KafkaError, SubscribeError
from .options import DEFAULT_PARTITIONS, KafkaOptions

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_PARTITIONS",
    "KafkaBroker",
    "KafkaConnectError",
    "KafkaDelivery",
    "KafkaError",
    "KafkaOptions",
    "KafkaSubscriber",
    "SubscribeError",
    "__version__",
    "check_kafka_topic",
]
