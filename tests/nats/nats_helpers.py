"""Small helpers shared by the nats tests."""

from __future__ import annotations

from support.eventually import eventually

from microbroker import Delivery

__all__ = ["Recorder", "eventually"]


class Recorder:
    """A broker handler that records what it is given."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []

    async def __call__(self, delivery: Delivery) -> None:
        self.deliveries.append(delivery)

    @property
    def bodies(self) -> list[bytes]:
        return [d.message.body for d in self.deliveries]

    def __len__(self) -> int:
        return len(self.deliveries)
