"""The AsyncAPI 3.0 document of a Service: its server, channels, operations and messages."""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .. import codecs
from .._delivery import Delivery
from .._headers import CONTENT_TYPE, ID, TOPIC
from .._message import Message
from ._schema import Schema, Schemas, is_protobuf_message_type, ref

if TYPE_CHECKING:
    from .._service import Service

ASYNCAPI_VERSION = "3.0.0"
"""The version of the AsyncAPI specification the documents follow."""

HEADERS_SCHEMA = "MicroHeaders"
"""The component schema of the headers every message carries."""

_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]+")
_MODULE_PREFIX = re.compile(r"\b(?:[A-Za-z_][A-Za-z0-9_]*\.)+(?=[A-Za-z_])")


# Bindings of the protocols that define a queue group on the operation (AsyncAPI's
# bindings specifications); every broker also gets the x-microbroker-queue field.
def _nats_queue(queue: str) -> dict[str, Any]:
    return {"queue": queue, "bindingVersion": "0.1.0"}


def _kafka_queue(queue: str) -> dict[str, Any]:
    return {"groupId": {"type": "string", "enum": [queue]}, "bindingVersion": "0.5.0"}


_QUEUE_BINDINGS: dict[str, Callable[[str], dict[str, Any]]] = {
    "nats": _nats_queue,
    "kafka": _kafka_queue,
}


def document(
    service: Service,
    *,
    version: str = "0.0.0",
    description: str | None = None,
) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of ``service``, as JSON-ready data.

    - one server: the service's broker (its name as the protocol, its address),
    - one channel per topic the service subscribes to (``service.subscriber``,
      ``server.subscribe``) or publishes on (``service.event``), its address
      the topic,
    - a ``receive`` operation per subscriber (with its queue group as
      ``x-microbroker-queue``, and as the NATS or Kafka binding on those
      brokers) and a ``send`` operation per Event,
    - a message per payload type, with its content type and its JSON Schema
      (dataclasses, TypedDicts, enums, pydantic models, protobuf messages...;
      named types under ``components/schemas``).

    ``version`` is the document's ``info.version`` (a Service has no version
    of its own); ``description`` its ``info.description``.
    """
    return _Builder(service).build(version, description)


class _Builder:
    def __init__(self, service: Service) -> None:
        self.service = service
        self.schemas = Schemas()
        self.channels: dict[str, dict[str, Any]] = {}
        self.operations: dict[str, dict[str, Any]] = {}
        self.messages: dict[str, dict[str, Any]] = {}
        self._channel_ids: dict[str, str] = {}  # topic -> channel id
        self._message_ids: dict[tuple[Any, str | None], str] = {}

    def build(self, version: str, description: str | None) -> dict[str, Any]:
        service = self.service
        info: dict[str, Any] = {"title": service.name, "version": version}
        if description:
            info["description"] = description
        self.schemas.components[HEADERS_SCHEMA] = _headers_schema()
        for subscription in service.server.subscribers:
            self._receive(subscription)
        for event in _distinct_events(service.events):
            self._send(event.topic, event.content_type or service.client.content_type)
        components: dict[str, Any] = {}
        if self.schemas.components:
            components["schemas"] = self.schemas.components
        if self.messages:
            components["messages"] = self.messages
        doc: dict[str, Any] = {
            "asyncapi": ASYNCAPI_VERSION,
            "info": info,
            "servers": _servers(service),
            "channels": self.channels,
            "operations": self.operations,
            "components": components,
        }
        return doc

    # Channels and messages ---------------------------------------------------------

    def _channel(self, topic: str) -> str:
        channel_id = self._channel_ids.get(topic)
        if channel_id is None:
            channel_id = _unique(_identifier(topic), self.channels)
            self._channel_ids[topic] = channel_id
            self.channels[channel_id] = {"address": topic, "messages": {}}
        return channel_id

    def _message(self, channel_id: str, payload_type: Any, content_type: str | None) -> str:
        """The id of the message of ``payload_type`` in ``channel_id``, made on first use."""
        key = (payload_type, content_type)
        message_id = self._message_ids.get(key)
        if message_id is None:
            message_id = _unique(_message_name(payload_type, content_type), self.messages)
            self._message_ids[key] = message_id
            self.messages[message_id] = self._message_object(message_id, payload_type, content_type)
        self.channels[channel_id]["messages"][message_id] = {
            "$ref": f"#/components/messages/{message_id}"
        }
        return message_id

    def _message_object(
        self, message_id: str, payload_type: Any, content_type: str | None
    ) -> dict[str, Any]:
        message: dict[str, Any] = {"name": message_id}
        if payload_type in (Delivery, Message):
            message["summary"] = "Any body: the subscriber takes the raw message."
            payload: Schema = {}
        elif payload_type is _UNTYPED:
            message["summary"] = "The Event does not declare the type of what it publishes."
            payload = {}
        else:
            message["title"] = _type_name(payload_type)
            payload = self.schemas.of(payload_type)
        if content_type is not None:
            message["contentType"] = content_type
        message["headers"] = ref(HEADERS_SCHEMA)
        message["payload"] = payload
        return message

    # Operations ------------------------------------------------------------------

    def _receive(self, subscription: Any) -> None:
        topic: str = subscription.topic
        channel_id = self._channel(topic)
        payload_type = subscription.message_type
        content_type = None
        if payload_type not in (Delivery, Message):
            content_type = codecs.content_type_for_type(payload_type)
        message_id = self._message(channel_id, payload_type, content_type)
        handler = subscription.handler
        name = getattr(handler, "__name__", None) or type(handler).__name__
        operation: dict[str, Any] = {
            "action": "receive",
            "channel": {"$ref": f"#/channels/{channel_id}"},
            "messages": [{"$ref": f"#/channels/{channel_id}/messages/{message_id}"}],
        }
        _add_docstring(operation, handler)
        queue: str | None = subscription.queue
        if queue is not None:
            binding = _QUEUE_BINDINGS.get(self.service.broker.name)
            if binding is not None:
                operation["bindings"] = {self.service.broker.name: binding(queue)}
            operation["x-microbroker-queue"] = queue
        operation["x-microbroker-handler"] = _qualified_name(handler)
        self.operations[_unique(_identifier(name), self.operations)] = operation

    def _send(self, topic: str, content_type: str | None) -> None:
        channel_id = self._channel(topic)
        message_id = self._message(channel_id, _UNTYPED, content_type)
        operation: dict[str, Any] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{channel_id}"},
            "messages": [{"$ref": f"#/channels/{channel_id}/messages/{message_id}"}],
            "summary": f"Published through service.event({topic!r}).",
        }
        self.operations[_unique(f"publish_{channel_id}", self.operations)] = operation


class _Untyped:
    """The payload type of an Event, which does not say what it publishes."""


_UNTYPED = _Untyped


def _distinct_events(events: Iterable[Any]) -> list[Any]:
    """One Event per (topic, content type): several Events on one topic are one operation."""
    seen: set[tuple[str, str | None]] = set()
    distinct = []
    for event in events:
        key = (event.topic, event.content_type)
        if key not in seen:
            seen.add(key)
            distinct.append(event)
    return distinct


def _servers(service: Service) -> dict[str, Any]:
    broker = service.broker
    name = broker.name
    servers: dict[str, Any] = {}
    # Several seed addresses (nats://a:4222,nats://b:4222) are several servers.
    addresses = [part.strip() for part in (broker.address or "").split(",") if part.strip()]
    for address in addresses or [""]:
        server: dict[str, Any] = _host(address) if address else {"host": "localhost"}
        server["protocol"] = name
        description = f"The {name} broker."
        if server["host"].endswith(":0"):
            description = f"The {name} broker, on a free port chosen when it connects."
        server["description"] = description
        servers[_unique(_identifier(name), servers)] = server
    return servers


def _host(address: str) -> dict[str, str]:
    """``nats://user:secret@h:4222/x`` -> host ``h:4222``, pathname ``/x``: no credentials."""
    if "://" not in address:
        return {"host": address.rpartition("@")[2]}
    parts = urlsplit(address)
    host = parts.netloc.rpartition("@")[2]
    out = {"host": host or address}
    if parts.path and parts.path != "/":
        out["pathname"] = parts.path
    return out


def _headers_schema() -> Schema:
    return {
        "type": "object",
        "description": "go-micro's headers, which the client writes on every message; any "
        "other header is metadata (ctx.metadata).",
        "properties": {
            CONTENT_TYPE: {"type": "string", "description": "The codec of the body."},
            TOPIC: {"type": "string", "description": "The topic it was published on."},
            ID: {"type": "string", "description": "A unique id of the message."},
        },
        "additionalProperties": {"type": "string"},
    }


def _add_docstring(operation: dict[str, Any], handler: Any) -> None:
    doc = inspect.getdoc(handler)
    if not doc:
        return
    summary, _, rest = doc.partition("\n\n")
    operation["summary"] = " ".join(summary.split())
    if rest.strip():
        operation["description"] = rest.strip()


def _qualified_name(handler: Any) -> str:
    target = handler if hasattr(handler, "__qualname__") else type(handler)
    module = getattr(target, "__module__", None)
    qualname: str = getattr(target, "__qualname__", repr(target))
    return f"{module}.{qualname}" if module else qualname


def _type_name(tp: Any) -> str:
    if is_protobuf_message_type(tp):
        return str(tp.DESCRIPTOR.full_name)
    if typing.get_origin(tp) is None and isinstance(getattr(tp, "__name__", None), str):
        return str(tp.__name__)
    # list[shop.Order] -> list[Order]: the modules say nothing a reader needs here.
    return _MODULE_PREFIX.sub("", str(tp))


def _message_name(payload_type: Any, content_type: str | None) -> str:
    if payload_type in (Delivery, Message):
        return "RawMessage"
    if payload_type is _UNTYPED:
        base = "AnyPayload"
        if content_type is not None:
            return f"{base}_{_identifier(content_type.rpartition('/')[2])}"
    elif is_protobuf_message_type(payload_type):
        base = _identifier(payload_type.DESCRIPTOR.name)
    else:
        base = _identifier(_type_name(payload_type))
    if content_type is not None and content_type != codecs.content_type_for_type(payload_type):
        base += "_" + _identifier(content_type.rpartition("/")[2])
    return base


def _identifier(text: str) -> str:
    """A key that AsyncAPI accepts and that needs no escaping in a JSON pointer."""
    return _UNSAFE.sub("_", text).strip("_") or "_"


def _unique(name: str, taken: dict[str, Any]) -> str:
    if name not in taken:
        return name
    n = 2
    while f"{name}_{n}" in taken:
        n += 1
    return f"{name}_{n}"
