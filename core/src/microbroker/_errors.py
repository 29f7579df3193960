"""The exception hierarchy. Every error microbroker raises is a MicrobrokerError."""

from __future__ import annotations

from collections.abc import Sequence


class MicrobrokerError(Exception):
    """Base class of every error raised by microbroker and its plugins."""


class PluginNotFound(MicrobrokerError, LookupError):
    """No installed plugin registers a broker, codec, client, server or registry by that name.

    The message lists the installed names, suggests the closest one and, for a
    broker, names the distribution to install.
    """

    def __init__(
        self,
        name: str,
        available: Sequence[str],
        *,
        suggestion: str | None = None,
        kind: str = "broker",
        install: str | None = None,
    ) -> None:
        self.name = name
        self.available = tuple(available)
        #: The closest name: an installed one, or a known plugin that is not installed.
        self.suggestion = suggestion
        self.kind = kind
        #: The distribution that provides ``suggestion`` when it is not installed.
        self.install = install
        parts = [f"no {kind} named {name!r} is installed."]
        parts.append(
            f"Installed {kind}s: {', '.join(self.available)}."
            if self.available
            else f"No {kind}s are installed."
        )
        if suggestion is not None and install is not None:
            parts.append(f"Did you mean {suggestion!r}? Install it: pip install {install}")
        elif install is not None:
            parts.append(f"It is a plugin: pip install {install}")
        elif suggestion is not None:
            parts.append(f"Did you mean {suggestion!r}?")
        elif kind == "broker":
            parts.append(f"If {name!r} is a plugin, install it: pip install microbroker-{name}")
        super().__init__(" ".join(parts))


class BrokerNotFound(PluginNotFound):
    """No installed plugin registers a broker under the requested name."""


class PluginError(MicrobrokerError):
    """A plugin failed to load or registered something invalid.

    ``distribution`` names the installed distribution at fault (or the plugin's
    name when it was registered by hand), so that the user knows what to fix or
    uninstall. Other plugins keep working.
    """

    def __init__(self, distribution: str, message: str) -> None:
        self.distribution = distribution
        super().__init__(f"plugin {distribution}: {message}")


class IncompatiblePlugin(PluginError):
    """A plugin written for another plugin API than this core's: it was not loaded at all.

    A plugin declares the plugin API versions it supports (``MICROBROKER_API =
    ">=1.0,<2"`` in the module its entry point names); this core's is
    :data:`microbroker.transport.API_VERSION`. None of the plugin's hooks ran.
    """

    def __init__(
        self,
        distribution: str,
        *,
        version: str,
        requires: str,
        api_version: str,
        core_version: str,
        upgrade: str,
    ) -> None:
        #: The plugin's version ("" for a plugin registered by hand).
        self.version = version
        #: The range of plugin API versions the plugin declares.
        self.requires = requires
        #: This core's plugin API version.
        self.api_version = api_version
        #: The distribution to upgrade: ``"microbroker"`` (the core is older than the
        #: plugin needs) or the plugin's (it was written for an older core).
        self.upgrade = upgrade
        plugin = f"{distribution} {version}".strip()
        text = (
            f"{plugin} is written for plugin API {requires}, and microbroker {core_version} "
            f"has plugin API {api_version}: "
        )
        if upgrade == "microbroker":
            text += (
                f"upgrade microbroker to a release whose plugin API is {requires} "
                f"(pip install -U microbroker), or install a release of {distribution} "
                f"written for plugin API {api_version}"
            )
        else:
            text += (
                f"upgrade {distribution} to a release written for plugin API {api_version} "
                f"(pip install -U {distribution}), or install a microbroker release whose "
                f"plugin API is {requires}"
            )
        super().__init__(distribution, f"{text}; it was not loaded")


class NotConnected(MicrobrokerError):
    """The broker is not connected: call ``connect()`` (or use ``async with``) first."""


class PublishError(MicrobrokerError):
    """A publish could not be handed over to the transport.

    Raised, for example, when no subscriber accepted a message on a broker that
    reports delivery, or when a bounded buffer is full.
    """


class MessageTooLarge(PublishError, ValueError):
    """A message over one of the broker's size limits: refused by publish.

    :attr:`limit_name` says which: ``"max_message_size"`` (the body plus every
    header's name and UTF-8 value, ``capabilities.max_message_size``) or
    ``"max_header_bytes"`` (the headers' names and UTF-8 values alone,
    ``capabilities.max_header_bytes``). Nothing was sent, and the broker stays connected.
    """

    def __init__(
        self,
        topic: str,
        size: int,
        limit: int,
        broker: str,
        *,
        limit_name: str = "max_message_size",
    ) -> None:
        self.topic = topic
        self.size = size
        self.limit = limit
        self.limit_name = limit_name
        if limit_name == "max_header_bytes":
            text = (
                f"the headers of the message on {topic!r} are {size} bytes (names and UTF-8 "
                f"values), more than the {broker} broker's max_header_bytes of {limit} bytes: "
                "carry large values in the body"
            )
        else:
            text = (
                f"the message on {topic!r} is {size} bytes (body and headers), more than the "
                f"{broker} broker's {limit_name} of {limit} bytes: send a smaller message"
            )
        super().__init__(text)


class GivenUp(MicrobrokerError):
    """A message was given up: it is dead-lettered or rejected, and never delivered again.

    Reported to the ``on_error`` hooks (with the delivery) when a message has
    used up the attempts of its subscription's :class:`~microbroker.RetryPolicy`
    or cannot be decoded. :attr:`dead_letter` is the topic it was published on,
    or ``None`` when it was rejected without one (no dead-letter topic, or the
    dead letter could not be published: :attr:`failure` says why).
    """

    def __init__(
        self,
        *,
        topic: str,
        attempts: int,
        dead_letter: str | None,
        cause: BaseException | None,
        failure: BaseException | None = None,
        intended: str | None = None,
    ) -> None:
        self.topic = topic
        self.attempts = attempts
        self.dead_letter = dead_letter
        #: The error of the last attempt (``None`` when the handler nacked or rejected it).
        self.cause = cause
        #: Why the dead letter could not be published, when it could not.
        self.failure = failure
        why = f"{type(cause).__name__}: {cause}" if cause is not None else "nacked"
        text = f"message on {topic!r} given up after {attempts} attempt(s) ({why})"
        if dead_letter is not None:
            text += f": dead-lettered to {dead_letter!r}"
        elif failure is not None:
            text += (
                f": rejected, because its dead letter could not be published to "
                f"{intended!r} ({type(failure).__name__}: {failure})"
            )
        else:
            text += ": rejected (its retry policy names no dead-letter topic)"
        super().__init__(text)


class InvalidTopic(MicrobrokerError, ValueError):
    """The topic is not valid for this broker (empty, too long, bad characters)."""


class InvalidHeader(MicrobrokerError, ValueError):
    """A header no transport can carry safely: raised by publish before anything is sent.

    Names are HTTP tokens (letters, digits and ``!#$%&'*+-.^_`|~``); values are
    str without CR, LF or NUL, encodable as UTF-8. Both rules keep a header
    from being split into two on the wire (header injection).
    """


class CodecError(MicrobrokerError):
    """Base class of errors raised while encoding or decoding a body."""


class EncodeError(CodecError, TypeError):
    """A value could not be encoded with the requested content type."""

    def __init__(self, content_type: str, value_type: type, cause: BaseException | None) -> None:
        self.content_type = content_type
        self.value_type = value_type
        self.cause = cause
        detail = f": {cause}" if cause is not None else ""
        super().__init__(
            f"cannot encode {value_type.__module__}.{value_type.__qualname__} "
            f"as {content_type}{detail}"
        )


class ConversionError(CodecError, ValueError):
    """A decoded JSON value does not fit the type it is converted into.

    ``str()`` is ``"<path>: <reason>"``, e.g. ``items[2].price: expected a
    number, got 'abc'``; ``path`` is ``""`` when the value itself does not fit.
    ``location`` holds the same place as keys: ``("items", 2, "price")``.
    A subscriber never sees it raw: the server wraps it in :class:`DecodeError`,
    whose ``path`` is this one's.
    """

    # Set by the converter when the JSON value is of the wrong kind altogether (a string
    # for an integer), so that a union reports a more telling member's error first.
    _wrong_kind = False

    def __init__(self, reason: str, location: Sequence[str | int] = ()) -> None:
        self.reason = reason
        self.location: tuple[str | int, ...] = tuple(location)
        # Rendered parts (".price", "[2]", "['key']"): a field name and a dict key are both
        # str in location, but they are written differently.
        self._parts = [_part(key) for key in self.location]
        super().__init__(reason, self.location)

    @property
    def path(self) -> str:
        """Where the value does not fit: ``items[2].price``, ``prices['eur']``, or ``""``."""
        return "".join(self._parts).removeprefix(".")

    def __str__(self) -> str:
        path = self.path
        return f"{path}: {self.reason}" if path else self.reason

    def _at_field(self, name: str) -> None:
        """Prefix the location with a field of the enclosing object (as the error unwinds)."""
        self.location = (name, *self.location)
        self._parts.insert(0, _part(name))
        self.args = (self.reason, self.location)

    def _at_item(self, key: str | int) -> None:
        """Prefix the location with an index of the enclosing array or a key of a mapping."""
        self.location = (key, *self.location)
        self._parts.insert(0, f"[{key!r}]")
        self.args = (self.reason, self.location)


def _part(key: str | int) -> str:
    """A field as ``.name`` (``['odd name']`` when it is no identifier), an index as ``[2]``."""
    if isinstance(key, str):
        return f".{key}" if key.isidentifier() else f"[{key!r}]"
    return f"[{key}]"


class DecodeError(CodecError):
    """A delivered body could not be decoded into the type a subscriber expects.

    It is reported to the ``on_error`` hooks; the subscriber's handler is not
    called, the subscription keeps running and the message is nacked.
    ``path`` names the field that did not fit (``items[2].price``; ``""`` for
    the body as a whole) when the cause says, as a :class:`ConversionError`
    does, and is ``None`` otherwise (bad JSON, bad protobuf).
    """

    def __init__(
        self,
        *,
        topic: str,
        content_type: str | None,
        expected: object,
        cause: BaseException | str,
        path: str | None = None,
    ) -> None:
        self.topic = topic
        self.content_type = content_type
        self.expected = expected
        self.cause = cause
        if path is None:
            found = getattr(cause, "path", None)
            path = found if isinstance(found, str) else None
        self.path = path
        expected_name = getattr(expected, "__qualname__", None) or repr(expected)
        super().__init__(
            f"cannot decode a message on topic {topic!r} "
            f"(Content-Type: {content_type or 'missing'}) into {expected_name}: {cause}"
        )


class RpcError(MicrobrokerError):
    """A remote call failed: go-micro's ``errors.Error`` (id, code, detail, status).

    Raised by :meth:`Client.call` and by a :class:`Stream` when the handler
    raised (code 500, or the code of an ``RpcError`` it raised itself), the
    endpoint is unknown (404), the request could not be decoded (400) or no
    instance serves the service (503). A handler raises it to choose the code
    the caller sees. ``str()`` is the go-micro JSON form.
    """

    def __init__(self, id: str, code: int, detail: str, status: str | None = None) -> None:
        self.id = id
        self.code = code
        self.detail = detail
        if status is None:
            from http import HTTPStatus

            try:
                status = HTTPStatus(code).phrase
            except ValueError:
                status = ""
        self.status = status
        super().__init__(id, code, detail, status)

    def __str__(self) -> str:
        import json

        return json.dumps(
            {"id": self.id, "code": self.code, "detail": self.detail, "status": self.status}
        )


class RpcTimeout(RpcError, TimeoutError):
    """No reply came before the call's deadline (code 408, as go-micro's ``errors.Timeout``)."""

    def __init__(self, id: str, detail: str, code: int = 408, status: str | None = None) -> None:
        super().__init__(id, code, detail, status)
