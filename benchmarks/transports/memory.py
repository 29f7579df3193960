"""The memory broker: microbroker only (there is no raw client of an in-process bus)."""

from __future__ import annotations

import uuid

from microbroker.brokers.memory import MemoryBroker

from . import Transport, no_server
from .common import MicrobrokerVariant


def transport() -> Transport:
    def microbroker_variant(_: object) -> MicrobrokerVariant:
        bus = f"bench-{uuid.uuid4().hex[:8]}"
        return MicrobrokerVariant(lambda: MemoryBroker(bus, max_pending=100_000))

    return Transport(
        "memory",
        {"microbroker": microbroker_variant},
        no_server,
        ["in-process bus: no raw client and no FastStream peer to compare with"],
    )
