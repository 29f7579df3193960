"""Header names, header checks and message ids: what every transport shares about headers.

Names are spelled as go-micro's ``transport/headers/headers.go`` writes them
(``Micro-ID``, ``Micro-Topic``...), so that messages look the same on the wire
as go-micro's; they are read case-insensitively everywhere.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Final

from ._errors import InvalidHeader

CONTENT_TYPE: Final = "Content-Type"
TOPIC: Final = "Micro-Topic"
ID: Final = "Micro-ID"
"""A unique id per published message (go-micro's ``headers.ID``)."""
SERVICE: Final = "Micro-Service"
ENDPOINT: Final = "Micro-Endpoint"
ERROR: Final = "Micro-Error"
"""Why a message failed: on an RPC error reply, and on a dead letter."""

# What a dead letter carries besides the original's headers.
ORIGINAL_TOPIC: Final = "Micro-Original-Topic"
"""The topic the dead-lettered message was delivered on."""
ORIGINAL_ID: Final = "Micro-Original-ID"
"""The ``Micro-ID`` of the dead-lettered message (the dead letter has an id of its own)."""
ERROR_TYPE: Final = "Micro-Error-Type"
"""The qualified name of the exception that made the last attempt fail."""
ATTEMPTS: Final = "Micro-Attempts"
"""How many deliveries the dead-lettered message had."""

RESERVED = frozenset(name.casefold() for name in (CONTENT_TYPE, TOPIC, ID))
"""Header names the Client sets itself: metadata cannot override them."""

# Unique message ids without a uuid4 per message: a random per-process prefix
# and a counter. Unique across processes with overwhelming probability.
_PREFIX: str
_counter: itertools.count[int]


def _draw_prefix() -> None:
    """A new prefix and counter: at import, and again in every forked child.

    A child must not repeat its parent's ids. JetStream deduplicates by message
    id: a worker forked by multiprocessing (the default start method on Linux)
    that repeated its parent's ids would have its messages dropped as duplicates.
    """
    global _PREFIX, _counter
    _PREFIX = os.urandom(8).hex() + "-"
    _counter = itertools.count(1)


_draw_prefix()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_draw_prefix)


def new_message_id() -> str:
    """A new unique message id, for the ``Micro-ID`` header: ``<16 hex digits>-<decimal>``."""
    return _PREFIX + str(next(_counter))


def normalize_content_type(content_type: str) -> str:
    """``"Application/JSON; charset=utf-8"`` -> ``"application/json"``."""
    return content_type.partition(";")[0].strip().lower()


# Checks ----------------------------------------------------------------------------

_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+").fullmatch
# Header names repeat from message to message: each is checked once, then remembered.
_valid_names: set[str] = set()
_MAX_REMEMBERED = 4096


def check_headers(headers: Mapping[str, str]) -> None:
    """Raise :class:`~microbroker.InvalidHeader` for a header no transport can carry safely.

    Names are HTTP tokens (letters, digits and ``!#$%&'*+-.^_`|~``); values are
    ``str`` without CR, LF or NUL, encodable as UTF-8. Both rules keep a header
    from being split in two on the wire (header injection). ``Broker.publish``
    applies this to every message, on every broker, before the transport sees it.
    """
    checked_length(headers)


def checked_length(headers: Mapping[str, str]) -> int:
    """:func:`check_headers`, returning the characters of every name and value.

    ``Broker.publish`` uses the count to skip the exact UTF-8 byte count of
    :func:`header_size` when it cannot reach a limit (UTF-8 takes at most 4
    bytes a character): the loop is the one the check makes anyway.
    """
    chars = 0
    for name, value in headers.items():
        if name not in _valid_names:
            _check_name(name)
        # Printable text has no CR, LF or NUL and no lone surrogate: the common case, in one call.
        if type(value) is not str or not value.isprintable():
            _check_value(name, value)
        chars += len(name) + len(value)
    return chars


def header_pairs(headers: Mapping[str, str]) -> list[tuple[str, bytes]]:
    """``headers`` as ``(name, UTF-8 value)`` pairs, for transports whose values are bytes.

    The headers of a published message have passed :func:`check_headers`
    already; this only encodes them.
    """
    return [(name, value.encode()) for name, value in headers.items()]


def header_size(headers: Mapping[str, str]) -> int:
    """The bytes ``headers`` count against a broker's ``max_message_size``.

    Each header counts its name and its UTF-8 value; framing (separators, a
    header block's preamble) is the transport's to allow for in what it declares.
    """
    return sum(len(name) + len(value.encode()) for name, value in headers.items())


def _check_name(name: str) -> None:
    if type(name) is not str or not _HEADER_NAME(name):
        raise InvalidHeader(
            f"invalid header name {name!r}: use letters, digits and !#$%&'*+-.^_`|~"
        )
    if len(_valid_names) < _MAX_REMEMBERED:
        _valid_names.add(name)


def _check_value(name: str, value: object) -> None:
    if type(value) is not str:
        raise InvalidHeader(f"header {name!r} must be a str, not {type(value).__name__}")
    if "\r" in value or "\n" in value or "\0" in value:
        raise InvalidHeader(f"header {name!r} cannot hold CR, LF or NUL: {value!r}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidHeader(f"header {name!r} is not valid UTF-8 text: {exc}") from exc


def one_line(text: str, limit: int = 1000) -> str:
    """``text`` as one header-safe line of at most ``limit`` characters."""
    text = " ".join(text.split())
    if not text.isprintable():
        text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# Metadata --------------------------------------------------------------------------


class Metadata(MutableMapping[str, str]):
    """Message metadata: a str-to-str mapping whose keys compare case-insensitively.

    The case a key was first written with is kept, so that names look on the
    wire as go-micro writes them (``Content-Type``, ``Micro-Topic``...).
    """

    __slots__ = ("_items",)

    def __init__(self, data: Mapping[str, str] | None = None, /, **kwargs: str) -> None:
        self._items: dict[str, tuple[str, str]] = {}
        if data:
            for key, value in data.items():
                self[key] = value
        for key, value in kwargs.items():
            self[key] = value

    def __getitem__(self, key: str) -> str:
        return self._items[key.casefold()][1]

    def __setitem__(self, key: str, value: str) -> None:
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(
                f"metadata keys and values are str, got {type(key).__name__}: "
                f"{type(value).__name__}"
            )
        folded = key.casefold()
        old = self._items.get(folded)
        self._items[folded] = (old[0] if old else key, value)

    def __delitem__(self, key: str) -> None:
        del self._items[key.casefold()]

    def __iter__(self) -> Iterator[str]:
        return (original for original, _ in self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.casefold() in self._items

    def to_headers(self) -> dict[str, str]:
        """A plain dict of the metadata, with keys in their original case."""
        return dict(self._items.values())

    def __repr__(self) -> str:
        return f"Metadata({self.to_headers()!r})"
