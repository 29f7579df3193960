"""The ``http`` broker, the default: go-micro's embedded HTTP broker, wire-compatible.

See :class:`HttpBroker` and ``docs/http-broker.md``.
"""

from ._broker import HttpBroker
from ._reports import Undelivered
from ._server import HttpSubscriber
from ._wire import BROADCAST, SERVICE

__all__ = ["BROADCAST", "SERVICE", "HttpBroker", "HttpSubscriber", "Undelivered"]
