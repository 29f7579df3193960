"""The Broker interface: what every transport implements, and what every broker does alike."""

from __future__ import annotations

import abc
import functools
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar, Self, TypeAlias

from . import _plugins
from ._delivery import Delivery, _Contract
from ._dispatch import concurrently, dispatcher, logged
from ._errors import InvalidHeader, MessageTooLarge, NotConnected
from ._headers import checked_length, header_size
from ._message import Message
from ._retry import DEFAULT_RETRY, RetryPolicy
from ._topics import Wildcards, check_topic

Handler: TypeAlias = Callable[[Delivery], Awaitable[None]]
"""A broker-level handler: ``async def handler(delivery: Delivery) -> None``."""

# Below this many bytes under the limit (with headers of at most this many bytes) a message
# cannot be over it: the exact size is counted only for messages close to the limit.
_SIZE_SLACK = 64 * 1024
# UTF-8 takes at most 4 bytes a character: headers of fewer characters need no exact count.
_UTF8_MAX = 4

DEFAULT_MAX_HEADERS = 256
"""``Capabilities.max_headers`` unless a broker declares otherwise."""
DEFAULT_MAX_HEADER_BYTES = 64 * 1024
"""``Capabilities.max_header_bytes`` unless a broker declares otherwise."""


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a broker promises. The conformance suite holds a broker to what it declares.

    Declare only what the broker really delivers: a capability declared and not
    delivered fails the suite, and one left undeclared is simply not tested.
    """

    queue_groups: bool = False
    """``subscribe(..., queue=Q)`` gives each message to exactly one member of group Q."""
    ack: bool = False
    """``nack()`` and handler exceptions lead to redelivery; ``ack()`` ends it."""
    at_least_once: bool = False
    """No message published while a subscription exists is lost, barring a broken server."""
    persistence: bool = False
    """Messages and durable subscriptions survive a restart of the server."""
    ordering: bool = True
    """One subscriber sees the messages of one topic from one publisher in publish order."""
    reconnect: bool = False
    """The broker reconnects by itself after the server restarts; subscriptions resume."""
    wildcards: Wildcards | None = None
    """Topic wildcards for subscribe, or ``None`` when topics are matched literally."""
    max_message_size: int | None = None
    """The largest message the broker carries, or ``None`` when only memory limits it.

    It counts the body plus every header's name and UTF-8 value (framing is
    the transport's to allow for). ``Broker.publish`` refuses a larger message
    with :class:`~microbroker.MessageTooLarge` before the transport sees it,
    and the broker stays connected; every message up to it is carried.
    """
    max_headers: int | None = DEFAULT_MAX_HEADERS
    """The most headers a message may have (default 256), or ``None`` for no limit.

    ``Broker.publish`` refuses a message with more with
    :class:`~microbroker.InvalidHeader`, before the transport sees it. A
    transport adds its own headers (``Micro-Topic``...) beyond it; a
    receiving side that checks what arrives allows for those.
    """
    max_header_bytes: int | None = DEFAULT_MAX_HEADER_BYTES
    """The most bytes a message's headers may take (default 64 KiB), or ``None`` for no limit.

    Counted as for ``max_message_size``: every header's name and UTF-8 value.
    ``Broker.publish`` refuses a message over it with
    :class:`~microbroker.MessageTooLarge` (``limit_name="max_header_bytes"``),
    before the transport sees it. Headers are parsed before a message is
    handled, often all at once: this bounds what a message costs a receiver
    before anyone looks at it.
    """


class Subscriber(abc.ABC):
    """A live subscription, from :meth:`Broker.subscribe`: go-micro's ``broker.Subscriber``."""

    def __init__(self, topic: str, queue: str | None, auto_ack: bool) -> None:
        self.topic = topic
        self.queue = queue
        self.auto_ack = auto_ack

    @property
    @abc.abstractmethod
    def active(self) -> bool:
        """Whether the subscription still receives messages."""

    @abc.abstractmethod
    async def unsubscribe(self) -> None:
        """Stop delivery to this subscription. Calling it twice is harmless.

        It must work from inside the subscription's own handler too.
        """

    def __repr__(self) -> str:
        return f"<{type(self).__name__} topic={self.topic!r} queue={self.queue!r}>"


class Broker(abc.ABC):
    """The asynchronous pub/sub interface every transport implements (go-micro's ``broker.Broker``).

    Use it as an async context manager (``async with broker:``) or call
    :meth:`connect` and :meth:`disconnect`. ``str(broker)`` is the name it was
    registered under.

    **For transports.** :meth:`publish` and :meth:`subscribe` are the same for
    every broker: they check their arguments, apply the event hooks of the
    installed plugins and the subscription's retry policy, and call the
    transport's :meth:`send` and :meth:`receive`, which a broker implements
    (with ``connected``, :meth:`connect` and :meth:`disconnect`).
    """

    #: The name the broker is registered under; ``get_broker`` sets it on each instance it
    #: creates. A plugin sets it on its class too, for brokers users make directly.
    name: str = "broker"
    #: What the broker promises; a broker whose guarantees depend on its options
    #: sets this per instance, in ``__init__``.
    capabilities: Capabilities = Capabilities()
    #: The address used when none is given (and ``MICRO_BROKER_ADDRESS`` is not set).
    default_address: ClassVar[str] = ""
    # Whether "connected" was logged and "disconnected" not yet (see _logging_connection).
    _told_connected: bool = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for method, instead in (("publish", "send"), ("subscribe", "receive")):
            if method in cls.__dict__:
                raise TypeError(
                    f"{cls.__qualname__} overrides Broker.{method}(): implement "
                    f"{instead}() instead; {method}() checks its arguments and applies the "
                    "plugins' event hooks and the retry policy the same way for every broker"
                )
        # Every transport's connect and disconnect say so on the broker's logger (INFO).
        for method in ("connect", "disconnect"):
            own = cls.__dict__.get(method)
            if own is not None and not getattr(own, "_microbroker_logged", False):
                setattr(cls, method, _logging_connection(own))

    @property
    def logger(self) -> logging.Logger:
        """The broker's logger, ``microbroker.broker.<name>``.

        The toolkit logs there at INFO when the broker connects, disconnects and
        subscribes, and at DEBUG each delivery and its settlement (for
        subscriptions made while DEBUG is on). A transport logs its own events
        (a reconnect, a server's refusal) there too.
        """
        return logging.getLogger(f"microbroker.broker.{self.name}")

    def __init__(self, address: str | None = None, **options: Any) -> None:
        """``address`` (default :attr:`default_address`) and the broker's options."""
        self._address = address or self.default_address
        self._options: dict[str, Any] = options
        self._hooked: tuple[_plugins.EventHooks, Callable[..., Awaitable[None]]] | None = None

    @property
    def address(self) -> str:
        """The address the broker connects to (or, for a broker that serves, listens on)."""
        return self._address

    @property
    def options(self) -> Mapping[str, Any]:
        """The options the broker was created with."""
        return self._options

    # What a transport implements. ----------------------------------------------------

    @property
    @abc.abstractmethod
    def connected(self) -> bool:
        """Whether :meth:`connect` succeeded and :meth:`disconnect` has not been called.

        Read on every publish: keep it cheap.
        """

    @abc.abstractmethod
    async def connect(self) -> None:
        """Connect to the transport. Raises a clear error when the server cannot be reached."""

    @abc.abstractmethod
    async def disconnect(self) -> None:
        """Drain what is in flight, end every subscription and close. Twice is harmless."""

    @abc.abstractmethod
    async def send(self, topic: str, message: Message, **options: Any) -> None:
        """Hand ``message`` to the transport: the transport's half of :meth:`publish`.

        The broker is connected, ``topic`` is a non-empty printable ``str``,
        the headers passed :func:`~microbroker.transport.check_headers`, the
        body is bytes-like and the message is within ``max_message_size``:
        :meth:`publish` checked all that. Transport rules (a wildcard in a
        published topic, a topic too long) and failures raise
        :class:`~microbroker.PublishError`, :class:`~microbroker.InvalidTopic`
        or :class:`~microbroker.NotConnected`.
        """

    @abc.abstractmethod
    async def receive(
        self,
        topic: str,
        deliver: Handler,
        *,
        queue: str | None,
        auto_ack: bool,
        **options: Any,
    ) -> Subscriber:
        """Start the transport's subscription: the transport's half of :meth:`subscribe`.

        For each incoming message build a :class:`~microbroker.Delivery` and
        ``await deliver(delivery)``: ``deliver`` runs the user's handler under
        the contract (hooks, ``auto_ack``, errors reported, the retry policy,
        giving up) and settles the delivery through its transport hooks.
        Return once the subscription receives every message published
        afterwards. ``options`` are the broker's own subscribe options
        (document them); refuse unknown ones with ``TypeError``.
        """

    # What every broker does alike. ---------------------------------------------------

    def publish(self, topic: str, message: Message, **options: Any) -> Awaitable[None]:
        """Publish ``message`` on ``topic``: ``await broker.publish(topic, message)``.

        Raises :class:`NotConnected` before :meth:`connect` or after
        :meth:`disconnect`, :class:`InvalidTopic` for a topic the broker cannot
        carry, :class:`InvalidHeader` for a header no transport can carry
        safely or more headers than ``capabilities.max_headers``, and
        :class:`MessageTooLarge` for headers over
        ``capabilities.max_header_bytes`` or a message over
        ``capabilities.max_message_size``; these are raised by the call
        itself, before anything is sent. Broker-specific ``options`` (a Kafka
        record key, an MQTT QoS...) are documented by each broker.
        """
        if not self.connected:
            raise NotConnected(
                f"{self.name} broker is not connected: call connect() or use 'async with broker'"
            )
        if type(topic) is not str or not topic or not topic.isprintable():
            check_topic(topic)
        if type(message) is not Message and not isinstance(message, Message):
            raise TypeError(
                f"publish() takes a microbroker.Message, not {type(message).__name__}: "
                "wrap the body as Message(body=..., headers={...})"
            )
        body: Any = message.body  # typed bytes, but a caller may pass anything
        if type(body) is not bytes and not isinstance(body, bytearray | memoryview):
            raise TypeError(f"a message body is bytes, not {type(body).__name__}")
        headers = message.headers
        capabilities = self.capabilities
        chars = 0
        if headers:
            count = len(headers)
            # A message the Client built and checked carries its count.
            chars = message._chars if message._checked == count else checked_length(headers)
            most = capabilities.max_headers
            if most is not None and count > most:
                raise InvalidHeader(
                    f"the message on {topic!r} has {count} headers, more than the "
                    f"{self.name} broker's max_headers of {most}: carry the rest in the body"
                )
            most = capabilities.max_header_bytes
            if most is not None and chars * _UTF8_MAX > most:
                size = header_size(headers)
                if size > most:
                    raise MessageTooLarge(
                        topic, size, most, self.name, limit_name="max_header_bytes"
                    )
        limit = capabilities.max_message_size
        if limit is not None and (
            len(body) > limit - _SIZE_SLACK or chars * _UTF8_MAX > _SIZE_SLACK
        ):
            size = len(body) + header_size(headers)
            if size > limit:
                raise MessageTooLarge(topic, size, limit, self.name)
        hooks = _plugins.hooks
        if hooks is None:
            hooks = _plugins.event_hooks()
        if hooks.publishes:
            hooked = getattr(self, "_hooked", None)
            if hooked is None or hooked[0] is not hooks:
                hooked = self._hooked = (hooks, hooks.publisher(self, self.send))
            hooked_publish: Awaitable[None] = hooked[1](topic, message, **options)
            return hooked_publish
        if options:
            return self.send(topic, message, **options)
        return self.send(topic, message)

    async def subscribe(
        self,
        topic: str,
        handler: Handler,
        *,
        queue: str | None = None,
        auto_ack: bool = True,
        retry: RetryPolicy | None = None,
        max_concurrency: int = 1,
        **options: Any,
    ) -> Subscriber:
        """Call ``handler`` for every message on ``topic``.

        Subscriptions sharing a ``queue`` name form a group in which each
        message goes to one member only. With ``auto_ack`` the broker acks
        after the handler returns. A handler that raises has failed an
        attempt: the message is delivered again after the backoff of
        ``retry`` (default :data:`~microbroker.DEFAULT_RETRY`: 5 attempts),
        then given up: published on the dead-letter topic (``<topic>.dlq``)
        and rejected, with a :class:`~microbroker.GivenUp` to the ``on_error``
        hooks. ``max_concurrency`` above 1 runs up to that many handlers at
        once, each in its own task (order is then not kept); the transport is
        held back while all are busy. Broker-specific ``options`` are
        documented by each broker.
        """
        if not self.connected:
            raise NotConnected(
                f"{self.name} broker is not connected: call connect() or use 'async with broker'"
            )
        check_topic(topic)
        if not callable(handler):
            raise TypeError(f"a handler is an async function, not {type(handler).__name__}")
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise TypeError(f"retry= takes a microbroker.RetryPolicy, not {type(retry).__name__}")
        hooks = _plugins.event_hooks()
        if hooks.delivers:
            handler = hooks.handler(self, topic, queue, handler)
        contract = _Contract(
            self.publish,
            retry or DEFAULT_RETRY,
            redelivers=self.capabilities.ack,
            explicit=retry is not None,
        )
        deliver = dispatcher(handler, auto_ack, contract)
        logger = self.logger
        if logger.isEnabledFor(logging.DEBUG):
            deliver = logged(deliver, logger)
        if max_concurrency > 1:
            deliver = concurrently(deliver, max_concurrency)
        subscriber = await self.receive(topic, deliver, queue=queue, auto_ack=auto_ack, **options)
        logger.info("subscribed to %r%s", topic, f" in queue group {queue!r}" if queue else "")
        return subscriber

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.disconnect()

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} address={self._address!r}>"


def _logging_connection(
    method: Callable[[Broker], Awaitable[None]],
) -> Callable[[Broker], Awaitable[None]]:
    """A transport's ``connect`` or ``disconnect`` that logs the change (once: a subclass
    calling its parent's logs nothing twice)."""
    connecting = method.__name__ == "connect"

    @functools.wraps(method)
    async def wrapper(self: Broker) -> None:
        await method(self)
        told = self._told_connected
        connected = self.connected
        if connected and not told:
            self._told_connected = True
            self.logger.info("connected to %s", self.address or "(in-process)")
        elif told and not connected and not connecting:
            self._told_connected = False
            self.logger.info("disconnected from %s", self.address or "(in-process)")

    wrapper._microbroker_logged = True  # type: ignore[attr-defined]
    return wrapper
