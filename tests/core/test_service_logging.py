"""What a Service logs on ``microbroker.service`` as it starts and stops (INFO lines only)."""

from __future__ import annotations

import logging
from typing import Any

import pytest

import microbroker


class Greeter:
    async def Hello(self, request: dict[str, Any]) -> dict[str, Any]:
        return request

    async def Bye(self, request: dict[str, Any]) -> dict[str, Any]:
        return request


def service_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "microbroker.service"]


async def test_start_and_stop_say_what_is_served_and_where(
    address: str, caplog: pytest.LogCaptureFixture
) -> None:
    broker = microbroker.get_broker("memory", address=address)
    service = microbroker.Service("shop", broker=broker, stop_timeout=2.5)

    @service.subscriber("orders.created", queue="billing")
    async def on_order(msg: dict[str, Any]) -> None:
        pass

    @service.subscriber("orders.cancelled")
    async def on_cancel(msg: dict[str, Any]) -> None:
        pass

    service.handle(Greeter())
    caplog.set_level(logging.INFO, logger="microbroker.service")
    await service.start()
    await service.start()  # already started: says nothing more
    assert service_lines(caplog) == [
        f"service 'shop' started on the memory broker at {address}",
        f"  subscriber {__name__}.test_start_and_stop_say_what_is_served_and_where.<locals>"
        ".on_order on 'orders.created' in queue group 'billing'",
        f"  subscriber {__name__}.test_start_and_stop_say_what_is_served_and_where.<locals>"
        ".on_cancel on 'orders.cancelled'",
        "  rpc handler Greeter: Greeter.Bye, Greeter.Hello",
    ]
    caplog.clear()
    await service.stop()
    await service.stop()  # stopped already: says nothing more
    assert service_lines(caplog) == [
        "service 'shop' stopping: running handlers get up to 2.5s",
        "service 'shop' stopped",
    ]


async def test_nothing_is_logged_below_info_or_for_a_failed_start(
    address: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="microbroker.service")
    async with microbroker.Service("quiet", broker=microbroker.get_broker("memory")):
        pass
    assert service_lines(caplog) == []

    caplog.set_level(logging.INFO, logger="microbroker.service")
    service = microbroker.Service("fails", broker=microbroker.get_broker("memory", address=address))

    @service.subscriber("a.>.b")  # refused by the broker when the server starts
    async def bad(msg: dict[str, Any]) -> None:
        pass

    with pytest.raises(microbroker.InvalidTopic):
        await service.start()
    assert service_lines(caplog) == []
