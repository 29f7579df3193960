"""The hooks a microbroker plugin implements. Each docstring is the plugin author's documentation.

A plugin is a module (or object) with functions marked ``@microbroker.hookimpl``,
named after the hooks below, and listed in its distribution's metadata::

    [project.entry-points.microbroker]
    nats = "microbroker_nats.plugin"

Implement only the hooks you need. The core registers its own built-ins
(``memory``, ``http``, the codecs...) through these same hooks.

These hooks and :mod:`microbroker.transport` are the plugin API, versioned as
:data:`microbroker.transport.API_VERSION`. Declare the versions your plugin
supports in that same module, as a string literal, so that a core outside the
range can refuse it before running any of its code::

    MICROBROKER_API = ">=1.0,<2"
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._markers import hookspec

if TYPE_CHECKING:
    from ._broker import Broker, Handler
    from ._delivery import Delivery
    from ._message import Message
    from .codecs import Codec

    PublishFn = Callable[..., Any]


# Registration: one call of ``register`` per thing the plugin offers. ----------------


@hookspec
def register_brokers(register: Callable[[str, Callable[..., Broker]], None]) -> None:
    """Offer brokers: call ``register(name, factory)`` once per broker.

    ``factory(**options)`` returns a :class:`microbroker.Broker`; it receives
    ``address`` and any options the user passes to ``get_broker``. ``name`` is
    what users select with ``MICRO_BROKER=name``; by convention the
    distribution is called ``microbroker-<name>``. A name already taken is an
    error naming your distribution; the first registration keeps it.
    """


@hookspec
def register_codecs(register: Callable[[str, Codec], None]) -> None:
    """Offer body codecs: call ``register(content_type, codec)`` once per content type.

    ``codec`` follows :class:`microbroker.codecs.Codec`. It is chosen by the
    ``Content-Type`` header of each message (compared without parameters and
    case-insensitively).
    """


@hookspec
def register_clients(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Offer Client implementations: ``register(name, factory)``, selected by ``MICRO_CLIENT``.

    ``factory(broker=..., **options)`` returns a :class:`microbroker.Client`.
    """


@hookspec
def register_servers(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Offer Server implementations: ``register(name, factory)``, selected by ``MICRO_SERVER``.

    ``factory(name, broker=..., **options)`` returns a :class:`microbroker.Server`.
    """


@hookspec
def register_registries(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Offer service registries for the http broker: ``register(name, factory)``.

    Selected by ``MICRO_REGISTRY``; ``factory(**options)`` returns a registry.
    """


# Event hooks: observe or wrap every publish and every delivery. ---------------------
# They are applied once, when a broker is created by ``get_broker`` or a
# subscription is made, never per message; a broker with no such hook
# implemented runs exactly as if the hooks did not exist.


@hookspec
def on_publish(broker: Broker, topic: str, message: Message) -> None:
    """Observe each publish before it is handed to the transport.

    ``message.headers`` may be changed here (to add trace context, for
    instance). Raising aborts the publish with that exception.
    """


@hookspec
def on_deliver(broker: Broker, delivery: Delivery) -> None:
    """Observe each delivery before its handler runs."""


@hookspec
def wrap_publish(broker: Broker, publish: PublishFn) -> PublishFn | None:
    """Wrap the publish function of ``broker``: return a replacement, or ``None`` to leave it.

    The replacement has the signature ``async (topic, message, **options)``
    and must await ``publish`` to send. Use it to time publishes or open a
    producer span around them.
    """


@hookspec
def wrap_handler(broker: Broker, topic: str, queue: str | None, handler: Handler) -> Handler | None:
    """Wrap the handler of a new subscription: return a replacement, or ``None`` to leave it.

    The replacement has the signature ``async (delivery)`` and must await
    ``handler``. An exception it lets through counts as a handler error (nack).
    """


@hookspec
def on_error(error: BaseException, delivery: Delivery | None) -> None:
    """Observe an error that happened while delivering ``delivery``.

    Called for handler exceptions and for :class:`microbroker.DecodeError`.
    The error is already handled (the delivery nacked); this hook is for
    logging, metrics and alerting. Exceptions raised here are logged and ignored.
    """
