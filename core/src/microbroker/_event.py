"""Event: the typed publisher of one topic (go-micro's ``micro.Event``)."""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from typing import Any

from ._client import Client
from ._topics import check_topic


class Event:
    """Publishes typed messages on one topic.

    The body is encoded by the codec of ``content_type`` (by default protobuf
    for protobuf messages, JSON for the rest); ``metadata`` travels as headers.
    Swapping the broker changes the transport under every Event and nothing else.
    """

    # __weakref__: a Service remembers its Events weakly (Service.events).
    __slots__ = ("__weakref__", "client", "content_type", "topic")

    def __init__(self, topic: str, client: Client, *, content_type: str | None = None) -> None:
        check_topic(topic)
        self.topic = topic
        self.client = client
        self.content_type = content_type

    def publish(
        self,
        message: Any,
        *,
        metadata: Mapping[str, str] | None = None,
        content_type: str | None = None,
        **options: Any,
    ) -> Awaitable[None]:
        """Encode ``message`` and publish it on this event's topic: ``await event.publish(m)``.

        The message is encoded when ``publish`` is called (an encoding error
        raises there); what it returns is the broker's publish, to await.
        """
        client = self.client
        topic = self.topic
        built = client.build_message(topic, message, content_type or self.content_type, metadata)
        # The broker's coroutine itself, not one wrapping it: one frame less per message.
        if options:
            return client.broker.publish(topic, built, **options)
        return client.broker.publish(topic, built)

    def __repr__(self) -> str:
        return f"<Event topic={self.topic!r}>"
