"""The broker-level message: string headers plus a raw byte body."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class Message:
    """A broker message: string headers and a raw byte body, as go-micro's ``broker.Message``.

    Header names are kept as given; :meth:`header` reads them case-insensitively,
    because transports and HTTP proxies do not all keep the case of a name.
    """

    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    # How many headers were already checked when the message was built (by the Client,
    # from values it made or checked itself); -1: none. ``Broker.publish`` checks the
    # headers of any other message: a header added since is checked, as is every one.
    _checked: int = field(default=-1, init=False, repr=False, compare=False)
    # The characters of those headers' names and values (for the size limits).
    _chars: int = field(default=0, init=False, repr=False, compare=False)

    def header(self, name: str, default: str | None = None) -> str | None:
        """Return the value of header ``name``, compared case-insensitively."""
        headers = self.headers
        value = headers.get(name)
        if value is not None:
            return value
        folded = name.casefold()
        # An ASCII name folds to one of the same length: most names are passed over unfolded.
        size = len(folded)
        for key, value in headers.items():
            if (len(key) == size or not key.isascii()) and key.casefold() == folded:
                return value
        return default
