"""microbroker: go-micro's Broker / Event / Client / Server design for Python.

The broker is chosen at run time by name (``MICRO_BROKER=nats``); transports
are plugins, installed as separate distributions and found through the
``microbroker`` entry-point group.
"""

from ._broker import (
    Broker,
    Capabilities,
    Handler,
    Subscriber,
    Wildcards,
    check_topic,
    dispatch,
    dispatcher,
)
from ._client import Client, Publication
from ._context import Context
from ._errors import (
    BrokerNotFound,
    CodecError,
    DecodeError,
    EncodeError,
    InvalidHeader,
    InvalidTopic,
    MicrobrokerError,
    NotConnected,
    PluginError,
    PluginNotFound,
    PublishError,
    RpcError,
    RpcTimeout,
)
from ._event import Event
from ._headers import Metadata
from ._markers import hookimpl
from ._message import Delivery, Message
from ._registry import (
    PluginInfo,
    available,
    available_brokers,
    get_broker,
    plugin_errors,
    register_plugin,
    report_error,
    unregister_plugin,
)
from ._retry import RetryPolicy, retrying
from ._rpc import Request
from ._rpc_server import RpcHandler
from ._rpc_stream import Stream
from ._server import Server, Subscription, register_subscriber
from ._service import Service

__all__ = [
    "Broker",
    "BrokerNotFound",
    "Capabilities",
    "Client",
    "CodecError",
    "Context",
    "DecodeError",
    "Delivery",
    "EncodeError",
    "Event",
    "Handler",
    "InvalidHeader",
    "InvalidTopic",
    "Message",
    "Metadata",
    "MicrobrokerError",
    "NotConnected",
    "PluginError",
    "PluginInfo",
    "PluginNotFound",
    "Publication",
    "PublishError",
    "Request",
    "RetryPolicy",
    "RpcError",
    "RpcHandler",
    "RpcTimeout",
    "Server",
    "Service",
    "Stream",
    "Subscriber",
    "Subscription",
    "Wildcards",
    "available",
    "available_brokers",
    "check_topic",
    "dispatch",
    "dispatcher",
    "get_broker",
    "hookimpl",
    "plugin_errors",
    "register_plugin",
    "register_subscriber",
    "report_error",
    "retrying",
    "unregister_plugin",
]
