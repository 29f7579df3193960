"""Publishing across a fault, as a careful user does: retry what raised, with the same id."""

from __future__ import annotations

import asyncio
import uuid

from microbroker import Broker, Message, MicrobrokerError


class RetryingPublisher:
    """Publishes numbered messages as a careful user would across a fault.

    A publish that raises is retried after a pause with the same ``Micro-Id``,
    so the server stores it once; at most ``concurrency`` publishes are in flight.
    """

    def __init__(
        self, broker: Broker, topic: str, *, concurrency: int = 32, attempts: int = 200
    ) -> None:
        self.broker = broker
        self.topic = topic
        self.attempts = attempts
        self.retries = 0
        #: How many publishes returned, and the last error a retried one raised (diagnostics).
        self.done = 0
        self.last_error: BaseException | None = None
        self._run = uuid.uuid4().hex[:8]
        self._slots = asyncio.Semaphore(concurrency)

    async def publish(self, n: int) -> None:
        message = Message(str(n).encode(), {"Micro-Id": f"{self._run}-{n}"})
        async with self._slots:
            for _ in range(self.attempts):
                try:
                    await self.broker.publish(self.topic, message)
                    self.done += 1
                    return
                except MicrobrokerError as exc:
                    self.retries += 1
                    self.last_error = exc
                    await asyncio.sleep(0.1)
        raise AssertionError(f"message {n} could not be published after {self.attempts} attempts")

    def start(self, numbers: range) -> list[asyncio.Task[None]]:
        """Publish ``numbers`` concurrently (up to ``concurrency`` at once)."""
        return [asyncio.create_task(self.publish(n)) for n in numbers]

    async def publish_in_order(self, numbers: range) -> None:
        """Publish ``numbers`` one after the other."""
        for n in numbers:
            await self.publish(n)
