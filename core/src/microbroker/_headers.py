"""go-micro's header names, and the case-insensitive metadata mapping built on them."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator, Mapping, MutableMapping

CONTENT_TYPE = "Content-Type"
TOPIC = "Micro-Topic"
ID = "Micro-Id"
SERVICE = "Micro-Service"
ENDPOINT = "Micro-Endpoint"
ERROR = "Micro-Error"

RESERVED = frozenset(name.casefold() for name in (CONTENT_TYPE, TOPIC, ID))

# Unique message ids without a uuid4 per message: a random per-process prefix
# and a counter. Unique across processes with overwhelming probability.
_PREFIX: str
_counter: itertools.count[int]


def _draw_prefix() -> None:
    """A new prefix and counter: at import, and again in every forked child.

    A child must not repeat its parent's ids. JetStream deduplicates by Micro-Id
    (the default ``msg_id``): a worker forked by multiprocessing (the default
    start method on Linux) that repeated its parent's ids would have its
    messages dropped as duplicates.
    """
    global _PREFIX, _counter
    _PREFIX = os.urandom(8).hex() + "-"
    _counter = itertools.count(1)


_draw_prefix()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_draw_prefix)


def new_message_id() -> str:
    """A new unique message id, for the ``Micro-Id`` header: ``<16 hex digits>-<decimal>``."""
    return _PREFIX + str(next(_counter))


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
