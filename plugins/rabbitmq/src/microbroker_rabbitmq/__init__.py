"""microbroker-rabbitmq: RabbitMQ (AMQP 0-9-1) as a microbroker broker, on aiormq."""

from .broker import RabbitMQBroker
from .errors import ConnectError
from .options import RabbitMQOptions

__all__ = ["ConnectError", "RabbitMQBroker", "RabbitMQOptions"]
__version__ = "0.1.0"
