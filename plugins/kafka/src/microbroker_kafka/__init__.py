"""microbroker-kafka: the Kafka broker for microbroker, on aiokafka.

Install it next to ``microbroker`` and select it by name::

    MICRO_BROKER=kafka MICRO_BROKER_ADDRESS=10.0.0.1:9092,10.0.0.2:9092

or ``microbroker.get_broker("kafka", address=..., partitions=6)``.
"""

from __future__ import annotations

from .broker import KafkaBroker, KafkaDelivery, KafkaSubscriber, check_kafka_topic
from .errors import KafkaConnectError, KafkaError, SubscribeError
from .options import KafkaOptions

__version__ = "0.1.0"

__all__ = [
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
