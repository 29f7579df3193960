"""Waiting in a test for something that happens in the background, bounded in time."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def eventually(predicate: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Wait until ``predicate()`` holds; fail with ``what`` after ``timeout`` seconds.

    The timeout only bounds a hang: no test asserts how fast anything is.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout}s")
        await asyncio.sleep(0.01)
