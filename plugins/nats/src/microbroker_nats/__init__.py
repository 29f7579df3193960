"""microbroker-nats: the NATS broker for microbroker, core NATS and JetStream.

Install it next to ``microbroker`` and select it by name::

    MICRO_BROKER=nats MICRO_BROKER_ADDRESS=nats://10.0.0.1:4222,nats://10.0.0.2:4222

or ``microbroker.get_broker("nats", address=..., jetstream=True)``. The broker is
built on the core's public transport toolkit (``microbroker.transport``).
"""

from __future__ import annotations

from .broker import (
    JetStreamDelivery,
    NatsBroker,
    NatsDelivery,
    NatsSubscriber,
    Responder,
    durable_name,
)
from .errors import (
    NatsAuthError,
    NatsConnectError,
    NatsError,
    NoResponders,
    RequestTimeout,
    SlowConsumer,
    StreamError,
    UnackedPublish,
    UnackedPublishes,
)
from .options import NatsOptions

__version__ = "0.1.0"

__all__ = [
    "JetStreamDelivery",
    "NatsAuthError",
    "NatsBroker",
    "NatsConnectError",
    "NatsDelivery",
    "NatsError",
    "NatsOptions",
    "NatsSubscriber",
    "NoResponders",
    "RequestTimeout",
    "Responder",
    "SlowConsumer",
    "StreamError",
    "UnackedPublish",
    "UnackedPublishes",
    "__version__",
    "durable_name",
]
