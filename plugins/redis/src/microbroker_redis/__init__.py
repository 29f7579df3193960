"""microbroker-redis: Redis Streams (default) or Pub/Sub as a microbroker broker, on redis-py."""

from .broker import RedisBroker
from .options import RedisOptions

__all__ = ["RedisBroker", "RedisOptions"]
__version__ = "0.1.0"
