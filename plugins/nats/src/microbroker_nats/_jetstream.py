"""JetStream's server side: the stream the broker creates or binds to, and its consumers.

In a cluster, JetStream's API goes unanswered for a few seconds while a leader
is elected after a node's death (nats-server's election timeout is 4 to 9 s):
the meta leader's for creating consumers and finding streams, a stream
leader's for its info. :meth:`Streams.ask` sends such a request again rather
than fail a subscribe or a lookup at the first silence.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TypeVar

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext, api

from microbroker import NotConnected
from microbroker.transport import backoff

from ._subjects import covers, is_pattern
from .errors import StreamError
from .options import NatsOptions

logger = logging.getLogger("microbroker.broker.nats")

_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9_-]")
T = TypeVar("T")

#: Times a JetStream API request is sent while it goes unanswered (see :meth:`Streams.ask`).
API_ATTEMPTS = 3


class Unavailable(StreamError):
    """JetStream could not answer: no leader to (an election in a cluster, a lost quorum)."""


#: JetStream's error code for a message id still being stored (a copy sent before).
IN_PROCESS = 10158
# Answers that are no decision, besides 503s: that, and a stream's full queue.
_BUSY = frozenset({IN_PROCESS, 10167})
# 503s that are one: out of resources (storage, memory).
_NO_RESOURCES = frozenset({10023, 10028, 10047})


def unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says that JetStream cannot answer now, rather than that it says no.

    A timeout; a 503 the server sent (``JetStream system temporarily
    unavailable``, ``raft: not leader``) unless it is out of resources; a
    message id still in process; a stream's full queue. The 503 nats-py makes
    of "no responders" (``err_code`` unset) says that JetStream is not enabled.
    """
    if isinstance(exc, nats.errors.TimeoutError):
        return True
    if not isinstance(exc, nats.js.errors.APIError) or exc.err_code is None:
        return False
    code = exc.err_code
    return code in _BUSY or (exc.code == 503 and code not in _NO_RESOURCES)


def durable_name(queue: str, topic: str) -> str:
    """The durable consumer of queue group ``queue`` on ``topic``.

    The group's name comes first, for whoever reads the server's consumer list;
    a digest of the topic follows, because a group name is commonly shared by
    several topics (a service's name) and each (group, topic) pair needs its own
    consumer.
    """
    digest = hashlib.blake2b(topic.encode(), digest_size=5).hexdigest()
    return f"{_UNSAFE_NAME.sub('_', queue)[:200]}_{digest}"


class Streams:
    """The JetStream side of one connection: streams looked up or widened, consumers made.

    With ``subjects=None`` (the default) each topic used is added to the
    configured stream when it is first published or subscribed to; with a
    list, the stream has those subjects and a topic outside them is an error.
    """

    def __init__(self, nc: NATS, settings: NatsOptions, servers: list[str]) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream(timeout=settings.publish_timeout)
        self.settings = settings
        self.servers = servers
        # The stream that captures each topic used so far.
        self._stream_of: dict[str, str] = {}
        self._lock = asyncio.Lock()

    def known(self, topic: str) -> bool:
        """Whether the stream of ``topic`` was looked up already."""
        return topic in self._stream_of

    def forget(self, topic: str) -> None:
        """Look the stream of ``topic`` up again next time (another broker changed it)."""
        self._stream_of.pop(topic, None)

    @property
    def _placeholder_subject(self) -> str:
        # A stream needs a subject; this one captures nothing a user publishes.
        return f"_microbroker.{self.settings.stream}"

    async def ask(self, request: Callable[[], Awaitable[T]], what: str) -> T:
        """The answer to a JetStream API request, sent again while JetStream cannot answer.

        Up to :data:`API_ATTEMPTS` sends, each waiting up to ``publish_timeout``,
        with a short pause in between; then :class:`Unavailable`, saying
        ``what`` was asked. The requests this broker makes (stream info, adding
        a stream, a subject or a named consumer) may safely be repeated.
        """
        for attempt in range(1, API_ATTEMPTS + 1):
            try:
                return await request()
            except (nats.errors.TimeoutError, nats.js.errors.APIError) as exc:
                if not unavailable(exc) or self.nc.is_closed:
                    raise
                if attempt == API_ATTEMPTS:
                    raise Unavailable(
                        f"JetStream did not answer {what} ({exc}; asked {API_ATTEMPTS} times, "
                        f"waiting {self.settings.publish_timeout}s each, option "
                        "publish_timeout): is it enabled on the server (nats-server -js), "
                        "and, in a cluster, are a quorum of its nodes up?"
                    ) from exc
                logger.info("nats: JetStream did not answer %s (%s): asking again", what, exc)
            await asyncio.sleep(backoff(attempt, 0.1, cap=1.0))
        raise AssertionError("unreachable")  # pragma: no cover

    async def setup(self) -> None:
        """Create the configured stream, or bind to it and add the configured subjects."""
        js = self.js
        settings = self.settings
        name = settings.stream
        try:
            info = await self.ask(partial(js.stream_info, name), f"about stream {name!r}")
        except nats.js.errors.NotFoundError:
            info = None
        except (nats.errors.NoRespondersError, nats.js.errors.ServiceUnavailableError) as exc:
            raise StreamError(
                f"JetStream is not enabled on the NATS server at {', '.join(self.servers)}: "
                "start nats-server with -js (or use the broker without jetstream=True)"
            ) from exc
        wanted = list(settings.subjects or [])
        try:
            if info is None:
                config = api.StreamConfig(
                    name=name,
                    subjects=wanted or [self._placeholder_subject],
                    storage=api.StorageType.FILE
                    if settings.storage == "file"
                    else api.StorageType.MEMORY,
                    num_replicas=settings.replicas,
                    max_age=settings.max_age,
                    duplicate_window=settings.duplicate_window,
                )
                await self.ask(partial(js.add_stream, config), f"creating stream {name!r}")
            else:
                present = list(info.config.subjects or [])
                missing = [s for s in wanted if not any(covers(p, s) for p in present)]
                if missing:
                    info.config.subjects = [*present, *missing]
                    await self.ask(
                        partial(js.update_stream, info.config), f"updating stream {name!r}"
                    )
        except nats.js.errors.APIError as exc:
            raise StreamError(
                f"cannot create or update stream {name!r}: {exc.description or exc}"
            ) from exc

    async def stream_for(self, topic: str) -> str:
        """The stream that captures ``topic``, adding it to ours when subjects are automatic."""
        known = self._stream_of.get(topic)
        if known is not None:
            return known
        try:
            return await self._find_or_add_subject(topic)
        except nats.js.errors.APIError as exc:
            raise StreamError(f"JetStream refused a request about {topic!r}: {exc}") from exc
        except nats.errors.TimeoutError as exc:
            raise StreamError(
                f"JetStream did not answer in time while looking up the stream of {topic!r}"
            ) from exc
        except nats.errors.Error as exc:
            if self.nc.is_closed or self.nc.is_draining:
                raise NotConnected(f"the nats connection closed while using {topic!r}") from exc
            raise StreamError(f"cannot look up the stream of {topic!r}: {exc}") from exc

    async def _find_or_add_subject(self, topic: str) -> str:
        js = self.js
        name = self.settings.stream
        async with self._lock:
            for _ in range(5):
                known = self._stream_of.get(topic)
                if known is not None:
                    return known
                try:
                    info = await self.ask(partial(js.stream_info, name), f"about stream {name!r}")
                except nats.js.errors.NotFoundError as exc:
                    raise StreamError(
                        f"stream {name!r} is gone from the server: reconnect the broker to "
                        "create it again"
                    ) from exc
                subjects = list(info.config.subjects or [])
                if any(covers(s, topic) for s in subjects):
                    self._stream_of[topic] = name
                    return name
                if not is_pattern(topic):
                    try:
                        other = await self.ask(
                            partial(js.find_stream_name_by_subject, topic),
                            f"which stream captures {topic!r}",
                        )
                    except nats.js.errors.NotFoundError:
                        other = None
                    if other:
                        self._stream_of[topic] = other
                        return other
                if self.settings.subjects is not None:
                    raise StreamError(
                        f"no JetStream stream captures {topic!r}: add it to the subjects of "
                        f"stream {name!r} (option subjects) or create a stream for it"
                    )
                placeholder = self._placeholder_subject
                config = info.config
                config.subjects = [
                    s for s in subjects if s != placeholder and not covers(topic, s)
                ] + [topic]
                try:
                    await self.ask(
                        partial(js.update_stream, config), f"adding {topic!r} to stream {name!r}"
                    )
                except nats.js.errors.APIError as exc:
                    raise StreamError(
                        f"cannot add {topic!r} to stream {name!r}: {exc.description or exc}"
                    ) from exc
            raise StreamError(f"could not add {topic!r} to stream {name!r}: it kept changing")

    # Consumers --------------------------------------------------------------------------

    async def consumer(
        self, topic: str, queue: str | None, durable: str | None
    ) -> tuple[str, api.ConsumerConfig]:
        """The stream and the push consumer a subscription to ``topic`` reads.

        A queue group shares one durable consumer (``durable_name(queue,
        topic)`` unless ``durable`` names it), which outlives its members; a
        broadcast subscription gets a consumer of its own, removed by the
        server after ``inactive_threshold`` once nobody reads it (unless it is
        ``durable``).
        """
        stream = await self.stream_for(topic)
        if queue:
            name = durable or durable_name(queue, topic)
            return stream, await self._queue_consumer(stream, name, topic, queue)
        name = durable or f"microbroker_{uuid.uuid4().hex}"
        config = self._consumer_config(name, topic, self.nc.new_inbox(), None)
        if durable is None:
            config.inactive_threshold = self.settings.inactive_threshold
        try:
            await self.ask(
                partial(self.js.add_consumer, stream, config),
                f"creating consumer {name!r} on stream {stream!r}",
            )
        except nats.js.errors.APIError as exc:
            raise StreamError(
                f"cannot create consumer {name!r} on stream {stream!r}: {exc.description or exc}"
            ) from exc
        return stream, config

    def _consumer_config(
        self, name: str, topic: str, deliver_subject: str, queue: str | None
    ) -> api.ConsumerConfig:
        settings = self.settings
        return api.ConsumerConfig(
            durable_name=name,
            deliver_subject=deliver_subject,
            deliver_group=queue,
            deliver_policy=api.DeliverPolicy.NEW
            if settings.deliver_policy == "new"
            else api.DeliverPolicy.ALL,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=settings.ack_wait,
            max_deliver=settings.max_deliver,
            max_ack_pending=settings.max_ack_pending,
            filter_subject=topic,
        )

    async def _queue_consumer(
        self, stream: str, name: str, topic: str, queue: str
    ) -> api.ConsumerConfig:
        """Bind to the group's durable consumer, creating it for the group's first member."""
        js = self.js
        for _ in range(3):
            try:
                info = await self.ask(
                    partial(js.consumer_info, stream, name),
                    f"about consumer {name!r} of stream {stream!r}",
                )
            except nats.js.errors.NotFoundError:
                created = self._consumer_config(name, topic, self.nc.new_inbox(), queue)
                try:
                    await self.ask(
                        partial(js.add_consumer, stream, created),
                        f"creating consumer {name!r} on stream {stream!r}",
                    )
                    return created
                except nats.js.errors.APIError:
                    continue  # another member created it at the same moment: bind to theirs
            config: api.ConsumerConfig = info.config
            if config.filter_subject not in (None, topic) or config.deliver_group != queue:
                raise StreamError(
                    f"consumer {name!r} of stream {stream!r} exists for topic "
                    f"{config.filter_subject!r} and group {config.deliver_group!r}, not for "
                    f"{topic!r} and {queue!r}: choose another durable name"
                )
            return config
        raise StreamError(f"cannot create or bind consumer {name!r} on stream {stream!r}")

    async def delete_consumer(self, stream: str, name: str) -> None:
        """Delete a consumer nobody will read again (the server would after inactive_threshold)."""
        try:
            await self.js.delete_consumer(stream, name)
        except Exception as exc:
            logger.info("nats: could not delete consumer %s: %s", name, exc)
