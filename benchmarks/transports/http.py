"""The http broker: in one process (microbroker only), and between two processes against a
naive one-POST-per-message baseline (reusing ``benchmarks/http_throughput.py``).

Neither nats-py nor FastStream speaks go-micro's http broker protocol; the
peer that means something here is the naive baseline: what go-micro's http
broker does, one awaited POST per message.
"""

from __future__ import annotations

import tempfile
from typing import Any

import microbroker
from microbroker.registries.local import LocalRegistry

from . import Transport, no_server
from .common import MicrobrokerVariant


def transport() -> Transport:
    def micro(_: object) -> MicrobrokerVariant:
        registry = tempfile.mkdtemp(prefix="bench-http-registry-")
        return MicrobrokerVariant(
            lambda: microbroker.get_broker("http", registry=LocalRegistry(registry))
        )

    return Transport(
        "http",
        {"microbroker": micro},
        no_server,
        ["one process, brokers find each other through a local file registry"],
    )


async def naive_comparison(quick: bool, repeat: int) -> list[Any]:
    """http broker against one POST per message, the subscriber in a child process."""
    import http_throughput
    from run import Row, log

    rows: list[Row] = []
    registry = tempfile.mkdtemp(prefix="bench-http-naive-")
    sizes = {"128B": 128, "1KiB": 1024, "64KiB": 64 * 1024}
    for size_name, size in sizes.items():
        if quick and size_name == "1KiB":
            continue
        n = (1_000 if quick else 10_000) // (10 if size >= 65536 else 1)
        cases = [
            ("naive", http_throughput.naive_case(registry, size, n // 2, repeat, 1)),
            ("naive-64", http_throughput.naive_case(registry, size, n, repeat, 64)),
            ("microbroker", http_throughput.http_case(registry, size, n, repeat, False)),
        ]
        for name, case in cases:
            result = await case
            rows.append(
                Row(
                    "http-naive",
                    "http",
                    name,
                    "1->1 two processes",
                    size_name,
                    result.rate,
                    "msg/s",
                )
            )
            log(f"  http {name:12} {size_name:6} {result.rate:>10,.0f} msg/s")
    return rows
