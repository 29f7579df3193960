"""The Client: publishes typed messages through the broker and calls services (RPC)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from . import codecs
from ._broker import Broker
from ._headers import (
    CONTENT_TYPE,
    ID,
    RESERVED,
    TOPIC,
    check_headers,
    new_message_id,
)
from ._message import Message
from ._rpc_client import ClientRpc
from ._topics import check_topic

# The characters of the names of the headers the Client always sets.
_OWN_NAMES = len(CONTENT_TYPE) + len(TOPIC) + len(ID)
# Payload types whose default encoding one client keeps (see Client._encoding_of).
_MAX_CACHED_TYPES = 256


@dataclass(frozen=True, slots=True)
class Publication:
    """A typed message bound for a topic: go-micro's ``client.Message``.

    Made by :meth:`Client.new_message`.
    """

    topic: str
    payload: Any
    content_type: str


class Client(ClientRpc):
    """Sends typed messages: go-micro's ``client.Client``.

    Publishing goes through the broker: the payload is encoded with the codec
    of its content type and the metadata travels as headers, beside go-micro's
    ``Content-Type``, ``Micro-Topic`` and ``Micro-Id``.
    """

    name = "default"

    def __init__(self, broker: Broker, *, content_type: str | None = None) -> None:
        """:param content_type: the content type of every publish that names none;
        by default protobuf for protobuf messages and JSON for the rest."""
        self.broker = broker
        self.content_type = content_type
        self._codecs: dict[str, codecs.Codec] = {}
        # Payload type -> its default content type and encoder (see _encoding_of).
        self._by_type: dict[type, tuple[str, Callable[[Any], bytes]]] = {}

    def new_message(
        self, topic: str, payload: Any, *, content_type: str | None = None
    ) -> Publication:
        """Bind ``payload`` to ``topic`` with its content type."""
        check_topic(topic)
        return Publication(topic, payload, self._content_type(payload, content_type))

    async def publish(
        self,
        message: Publication,
        *,
        metadata: Mapping[str, str] | None = None,
        **options: Any,
    ) -> None:
        """Encode and publish ``message``; ``options`` go to the broker's publish."""
        await self.publish_value(
            message.topic, message.payload, message.content_type, metadata, options
        )

    async def publish_value(
        self,
        topic: str,
        payload: Any,
        content_type: str | None,
        metadata: Mapping[str, str] | None,
        options: Mapping[str, Any],
    ) -> None:
        """Encode ``payload`` and publish it on ``topic`` (see :meth:`build_message`)."""
        message = self.build_message(topic, payload, content_type, metadata)
        await self.broker.publish(topic, message, **options)

    def build_message(
        self,
        topic: str,
        payload: Any,
        content_type: str | None,
        metadata: Mapping[str, str] | None,
    ) -> Message:
        """The broker message for ``payload``: its encoded body and go-micro's headers.

        The headers are the ``metadata`` (less any reserved name), then
        ``Content-Type``, ``Micro-Topic`` and a new ``Micro-Id``.
        """
        if content_type is None and self.content_type is None:
            # The common case: the payload's type decides both content type and encoder.
            by_type = self._by_type.get(type(payload))
            if by_type is None:
                by_type = self._encoding_of(payload)
            content_type, encode = by_type
            body = encode(payload)
        else:
            if content_type is None:
                content_type = self.content_type
            assert content_type is not None
            codec = self._codecs.get(content_type)
            if codec is None:
                codec = self.codec(content_type)
            body = codec.encode(payload)
        if not metadata:
            message = Message(
                body, {CONTENT_TYPE: content_type, TOPIC: topic, ID: new_message_id()}
            )
        else:
            headers = {k: v for k, v in metadata.items() if k.casefold() not in RESERVED}
            check_headers(headers)
            headers[CONTENT_TYPE] = content_type
            headers[TOPIC] = topic
            headers[ID] = new_message_id()
            message = Message(body, headers)
        # The headers are safe as they are: the metadata was checked above, the content type
        # when its codec was looked up, and the id is ours; the topic is a header value when it
        # is printable text (publish checks the topic itself too).
        if type(topic) is str and topic.isprintable():
            message._checked = len(message.headers)
        return message

    def _encoding_of(self, payload: Any) -> tuple[str, Callable[[Any], bytes]]:
        """The default content type of ``payload``'s type and the encoder for it, cached."""
        kind = type(payload)
        content_type = codecs.content_type_for(payload)
        codec = self.codec(content_type)
        encode: Callable[[Any], bytes] = codec.encode
        if type(codec) is codecs.ProtobufCodec and codecs.is_protobuf_type(kind):
            encode = kind.SerializeToString  # what ProtobufCodec.encode calls, without the call
        by_type = (content_type, encode)
        if len(self._by_type) < _MAX_CACHED_TYPES:
            self._by_type[kind] = by_type
        return by_type

    def codec(self, content_type: str) -> codecs.Codec:
        """The codec for ``content_type``, looked up once per client.

        ``content_type`` is checked as a header value here, once: it is sent as one.
        """
        codec = self._codecs.get(content_type)
        if codec is None:
            check_headers({CONTENT_TYPE: content_type})
            codec = self._codecs[content_type] = codecs.get_codec(content_type)
        return codec

    def _content_type(self, payload: Any, content_type: str | None) -> str:
        return content_type or self.content_type or codecs.content_type_for(payload)

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"<Client {self.name!r} broker={self.broker.name!r}>"
