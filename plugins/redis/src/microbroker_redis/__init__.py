"""microbroker-redis: Redis Streams (default) or Pub/Sub as a microbroker broker, on redis-py."""

from .broker import RedisBroker
from .errors import RedisAuthError, RedisConnectError, RedisError
from .options import RedisOptions

__all__ = ["RedisAuthError", "RedisBroker", "RedisConnectError", "RedisError", "RedisOptions"]
__version__ = "0.1.0"
