"""Reporting without flooding: warnings at most once an interval, and dropped messages counted.

A fault that repeats for every message or every connection (a flood of
connections, a dead subscriber with thousands of messages on their way) must
be reported, and reported once an interval with a count, never once per
event: a log or an ``on_error`` hook that receives a line per message turns
one fault into a second one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from ..._errors import PublishError

WARN_INTERVAL = 30.0
"""Seconds between two warnings about the same thing."""
REPORT_INTERVAL = 1.0
"""Seconds a report of undelivered messages gathers its count before it goes to ``on_error``."""


class Throttled:
    """Log a warning per key at most once every ``interval`` seconds, with what was held back."""

    def __init__(self, logger: logging.Logger, interval: float = WARN_INTERVAL) -> None:
        self._logger = logger
        self._interval = interval
        self._last: dict[str, tuple[float, int]] = {}

    def warning(
        self, key: str, message: str, *args: Any, exc_info: BaseException | None = None
    ) -> None:
        now = time.monotonic()
        since, held = self._last.get(key, (-self._interval, 0))
        if now - since < self._interval:
            self._last[key] = (since, held + 1)
            return
        self._last[key] = (now, 0)
        if held:
            message += " (%d more like it in the last %.0fs)"
            args = (*args, held, now - since)
        self._logger.warning(message, *args, exc_info=exc_info)


class Undelivered(PublishError):
    """Messages the http broker gave up without an ack, reported together to ``on_error``.

    One report per target subscription and reason per interval (about a
    second), however many messages it counts: :attr:`count` of them, on
    :attr:`topic`, to the subscription :attr:`node` at :attr:`address`;
    :attr:`cause` is the error of the first one. A ``publish(...,
    confirm=True)`` gets its own :class:`~microbroker.PublishError` instead.
    """

    def __init__(
        self, topic: str, node: str, address: str, count: int, cause: BaseException
    ) -> None:
        self.topic = topic
        self.node = node
        self.address = address
        self.count = count
        self.cause = cause
        super().__init__(
            f"{count} message(s) on {topic!r} to subscription {node} at {address} were not "
            f"delivered: {cause}"
        )


class Tally:
    """Counts undelivered messages per (target, reason) and reports each count once an interval."""

    def __init__(
        self, report: Callable[[BaseException], None], interval: float = REPORT_INTERVAL
    ) -> None:
        self._report = report
        self._interval = interval
        self._open: dict[tuple[str, str, str], list[Any]] = {}
        self._timer: asyncio.TimerHandle | None = None

    def add(self, topic: str, node: str, address: str, reason: str, cause: BaseException) -> None:
        """Count one message to ``node`` given up for ``reason`` (a short key, e.g. ``"gone"``)."""
        key = (topic, node, reason)
        entry = self._open.get(key)
        if entry is not None:
            entry[0] += 1
            return
        self._open[key] = [1, address, cause]
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._interval, self.flush)

    def flush(self) -> None:
        """Report what was counted (at the end of an interval, and at disconnect)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        entries, self._open = self._open, {}
        for (topic, node, _reason), (count, address, cause) in entries.items():
            self._report(Undelivered(topic, node, address, count, cause))
