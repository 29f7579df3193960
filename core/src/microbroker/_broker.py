"""The Broker interface: what every transport implements."""

from __future__ import annotations

import abc
import functools
import logging
import re
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar, Self, TypeAlias

from ._errors import InvalidHeader, InvalidTopic, NotConnected
from ._message import Delivery, Message

Handler: TypeAlias = Callable[[Delivery], Awaitable[None]]
"""A broker-level handler: ``async def handler(delivery: Delivery) -> None``."""

logger = logging.getLogger("microbroker")


@dataclass(frozen=True, slots=True)
class Wildcards:
    """The wildcard syntax of a broker's topics.

    For example NATS: ``.``, ``*``, ``>``; MQTT: ``/``, ``+``, ``#``.
    """

    separator: str
    one: str
    """Matches exactly one level."""
    many: str
    """Matches one or more trailing levels."""


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
    """Largest body (bytes) the broker accepts, or ``None`` when only memory limits it."""


class Subscriber(abc.ABC):
    """A live subscription, returned by :meth:`Broker.subscribe`."""

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
        """Stop delivery to this subscription. Calling it twice is harmless."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} topic={self.topic!r} queue={self.queue!r}>"


class Broker(abc.ABC):
    """The asynchronous pub/sub interface every transport implements (go-micro's ``broker.Broker``).

    Use it as an async context manager (``async with broker:``) or call
    :meth:`connect` and :meth:`disconnect`. ``str(broker)`` is the name it was
    registered under.
    """

    #: The name the broker is registered under; the registry sets it on each instance it creates.
    name: str = "broker"
    #: What the broker promises; a broker whose guarantees depend on its options
    #: sets this per instance.
    capabilities: Capabilities = Capabilities()
    #: The address used when none is given.
    default_address: ClassVar[str] = ""

    def __init__(self, address: str | None = None, **options: Any) -> None:
        self._address = address or self.default_address
        self._options: dict[str, Any] = options

    @property
    def address(self) -> str:
        """The address the broker connects to (or, for a broker that serves, listens on)."""
        return self._address

    @property
    def options(self) -> Mapping[str, Any]:
        """The options the broker was created with."""
        return self._options

    @property
    @abc.abstractmethod
    def connected(self) -> bool:
        """Whether :meth:`connect` succeeded and :meth:`disconnect` has not been called."""

    @abc.abstractmethod
    async def connect(self) -> None:
        """Connect to the transport. Raises a clear error when the server cannot be reached."""

    @abc.abstractmethod
    async def disconnect(self) -> None:
        """Drain what is in flight, end every subscription and close the connection."""

    @abc.abstractmethod
    async def publish(self, topic: str, message: Message, **options: Any) -> None:
        """Publish ``message`` on ``topic``.

        Raises :class:`NotConnected` before :meth:`connect` or after
        :meth:`disconnect`, and :class:`InvalidTopic` for a topic the broker
        cannot carry. Broker-specific ``options`` (a Kafka record key, an MQTT
        QoS...) are documented by each broker.
        """

    @abc.abstractmethod
    async def subscribe(
        self,
        topic: str,
        handler: Handler,
        *,
        queue: str | None = None,
        auto_ack: bool = True,
        **options: Any,
    ) -> Subscriber:
        """Call ``handler`` for every message on ``topic``.

        Subscriptions sharing a ``queue`` name form a group in which each
        message goes to one member only. With ``auto_ack`` the broker acks
        after the handler returns; a handler that raises is always a nack.
        """

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

    # Helpers for implementations. ------------------------------------------------

    def _check_publish(self, topic: str, message: Message) -> None:
        """Raise the standard errors for a publish that cannot proceed."""
        if not self.connected:
            raise NotConnected(
                f"{self.name} broker is not connected: call connect() or use 'async with broker'"
            )
        check_topic(topic)
        if type(message) is not Message and not isinstance(message, Message):
            raise TypeError(
                f"publish() takes a microbroker.Message, not {type(message).__name__}: "
                "wrap the body as Message(body=..., headers={...})"
            )
        if message.headers:
            check_headers(message.headers)
        if not isinstance(message.body, bytes | bytearray | memoryview):
            raise TypeError(f"a message body is bytes, not {type(message.body).__name__}")

    def _check_subscribe(self, topic: str) -> None:
        if not self.connected:
            raise NotConnected(
                f"{self.name} broker is not connected: call connect() or use 'async with broker'"
            )
        check_topic(topic)


def check_topic(topic: str) -> None:
    """Raise :class:`InvalidTopic` for a topic no broker can carry.

    That is: not a str, empty, or holding control characters (which split or
    end a topic on the wire of several transports). Each broker adds its own
    rules (length, characters, wildcards).
    """
    if not topic or type(topic) is not str or not topic.isprintable():
        if not isinstance(topic, str):
            raise InvalidTopic(f"a topic is a str, not {type(topic).__name__}")
        if not topic:
            raise InvalidTopic("the topic is empty")
        raise InvalidTopic(f"a topic cannot hold control characters: {topic!r}")


_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+").fullmatch
# Header names repeat from message to message: each is checked once, then remembered.
_valid_names: set[str] = set()
_MAX_REMEMBERED = 4096


def check_headers(headers: dict[str, str]) -> None:
    """Raise :class:`InvalidHeader` for a header no transport can carry safely."""
    for name, value in headers.items():
        if name not in _valid_names:
            _check_header_name(name)
        # Printable text has no CR, LF or NUL and no lone surrogate: the common case, in one call.
        if type(value) is not str or not value.isprintable():
            _check_header_value(name, value)


def header_pairs(headers: dict[str, str]) -> list[tuple[str, bytes]]:
    """``headers`` checked as :func:`check_headers` checks them, as ``(name, UTF-8 value)`` pairs.

    For transports whose header values are bytes (Kafka record headers): one
    pass, rather than a check and then an encoding.
    """
    pairs: list[tuple[str, bytes]] = []
    append = pairs.append
    for name, value in headers.items():
        if name not in _valid_names:
            _check_header_name(name)
        if type(value) is not str or not value.isprintable():
            _check_header_value(name, value)
        append((name, value.encode()))
    return pairs


def _check_header_name(name: str) -> None:
    if type(name) is not str or not _HEADER_NAME(name):
        raise InvalidHeader(
            f"invalid header name {name!r}: use letters, digits and !#$%&'*+-.^_`|~"
        )
    if len(_valid_names) < _MAX_REMEMBERED:
        _valid_names.add(name)


def _check_header_value(name: str, value: str) -> None:
    if type(value) is not str:
        raise InvalidHeader(f"header {name!r} must be a str, not {type(value).__name__}")
    if "\r" in value or "\n" in value or "\0" in value:
        raise InvalidHeader(f"header {name!r} cannot hold CR, LF or NUL: {value!r}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidHeader(f"header {name!r} is not valid UTF-8 text: {exc}") from exc


def dispatch(handler: Handler, delivery: Delivery, auto_ack: bool) -> Coroutine[Any, Any, None]:
    """Run ``handler`` on ``delivery`` with the standard settlement rules: ``await dispatch(...)``.

    Every broker calls this (or :func:`dispatcher`) for each delivery, so that
    all behave alike: an exception is reported to the ``on_error`` hooks and
    nacks the delivery; with ``auto_ack`` a handler that returns without
    settling acks it.
    """
    return _dispatch(handler, auto_ack, delivery)


def dispatcher(handler: Handler, auto_ack: bool) -> Handler:
    """``handler`` under :func:`dispatch`'s rules, made once per subscription.

    ``dispatcher(handler, auto_ack)(delivery)`` does what ``dispatch(handler,
    delivery, auto_ack)`` does. A typed subscriber's handler settles its
    deliveries itself, in the frame that decodes and calls: a broker that makes
    its dispatcher once, when it subscribes, saves a coroutine per message.
    """
    # Looked up on the type: a mock (AsyncMock) handler answers any attribute asked of it.
    settling = getattr(type(handler), "_microbroker_dispatcher", None)
    if settling is not None:
        made: Handler = settling(handler, auto_ack)
        return made
    return functools.partial(_dispatch, handler, auto_ack)


async def _dispatch(handler: Handler, auto_ack: bool, delivery: Delivery) -> None:
    try:
        await handler(delivery)
    except Exception as exc:
        await settle_failure(exc, delivery)
    else:
        if auto_ack and delivery._state == 0:
            if delivery.acks_locally:
                delivery._state = 1
            else:
                await delivery.ack()


async def settle_failure(exc: Exception, delivery: Delivery) -> None:
    """What :func:`dispatch` does when a handler raises: report ``exc``, nack if unsettled."""
    from ._registry import report_error

    report_error(exc, delivery)
    if not delivery.settled:
        await delivery.nack()
