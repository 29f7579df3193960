"""microbroker: go-micro's Broker / Event / Client / Server design for Python.

The broker is chosen at run time by name (``MICRO_BROKER=nats``); transports
are plugins, installed as separate distributions and found through the
``microbroker`` entry-point group. :mod:`microbroker.transport` is the toolkit
they are built on.

This module is the composition root: it hands the core's own plugin (the
``memory`` and ``http`` brokers, the codecs, the default client and server) to
the plugin registry, which registers it through the same hooks as any plugin.
"""

from . import _builtins, _plugins
from ._broker import Broker, Capabilities, Handler, Subscriber
from ._client import Client, Publication
from ._context import Context
from ._delivery import Delivery, Settlement
from ._errors import (
    BrokerNotFound,
    CodecError,
    ConversionError,
    DecodeError,
    EncodeError,
    GivenUp,
    IncompatiblePlugin,
    InvalidHeader,
    InvalidTopic,
    MessageTooLarge,
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
from ._message import Message
from ._plugins import (
    PluginInfo,
    available,
    available_brokers,
    plugin_errors,
    register_plugin,
    report_error,
    unregister_plugin,
)
from ._retry import DEFAULT_RETRY, RetryPolicy
from ._rpc import Request
from ._rpc_server import RpcHandler
from ._rpc_stream import Stream
from ._selection import get_broker
from ._server import Server, SubscriberSpec, register_subscriber
from ._service import Service
from ._topics import Wildcards, check_topic

_plugins.install_builtins(_builtins)

__all__ = [
    "DEFAULT_RETRY",
    "Broker",
    "BrokerNotFound",
    "Capabilities",
    "Client",
    "CodecError",
    "Context",
    "ConversionError",
    "DecodeError",
    "Delivery",
    "EncodeError",
    "Event",
    "GivenUp",
    "Handler",
    "IncompatiblePlugin",
    "InvalidHeader",
    "InvalidTopic",
    "Message",
    "MessageTooLarge",
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
    "Settlement",
    "Stream",
    "Subscriber",
    "SubscriberSpec",
    "Wildcards",
    "available",
    "available_brokers",
    "check_topic",
    "get_broker",
    "hookimpl",
    "plugin_errors",
    "register_plugin",
    "register_subscriber",
    "report_error",
    "unregister_plugin",
]
