"""Turn a run's results into a markdown report, and (``--publish``) docs/benchmarks.md + a plot."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
PLOT = ROOT / "docs" / "benchmarks-throughput.png"

KINDS = ("raw", "microbroker", "faststream")


def _fmt(value: float, unit: str) -> str:
    if unit == "MB":
        return f"{value:+.1f} MB"
    if unit == "us":
        return f"{value:,.0f} us"
    return f"{value:,.0f}"


def _ratio(a: float | None, b: float | None, lower_is_better: bool = False) -> str:
    if not a or not b:
        return "-"
    return f"{(b / a if lower_is_better else a / b):.2f}x"


def _measured(
    rows: list[dict[str, Any]], section: str
) -> dict[tuple[str, str, str], dict[str, Any]]:
    """Rows of ``section`` by (transport, shape, size), then by variant."""
    grouped: dict[tuple[str, str, str], dict[str, Any]] = defaultdict(dict)
    for r in rows:
        if r["section"] == section:
            grouped[(r["transport"], r["shape"], r["size"])][r["variant"]] = r
    return grouped


def ratio_of(v: dict[str, Any], kind: str, baseline: str) -> float | None:
    """``kind`` over ``baseline``: the median of the per-round ratios of an interleaved
    run, or the ratio of the two rates where the rounds were not kept."""
    row, base = v.get(kind), v.get(baseline)
    if not row or not base or not base["value"]:
        return None
    found = row.get("extra", {}).get(f"vs_{baseline}")
    if found:
        return float(found["median"])
    return float(row["value"] / base["value"])


def _ratio_cell(v: dict[str, Any], kind: str, baseline: str) -> str:
    x = ratio_of(v, kind, baseline)
    if x is None:
        return "-"
    found = v[kind].get("extra", {}).get(f"vs_{baseline}")
    if found and found.get("rounds", 0) > 1:
        return f"{x:.2f}x ({found['min']:.2f}-{found['max']:.2f})"
    return f"{x:.2f}x"


def throughput_table(rows: list[dict[str, Any]], section: str, title: str) -> list[str]:
    grouped = _measured(rows, section)
    if not grouped:
        return []
    lines = [
        f"### {title}",
        "",
        "Deliveries per second, each variant's best round (a fan-out of ten counts ten "
        "per message). Ratios are microbroker's over the other's, taken in each "
        "interleaved round: the median, and in brackets the lowest and highest round.",
        "",
        "| transport | shape | body | raw | microbroker | FastStream | vs raw | vs FastStream |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for (transport, shape, size), v in grouped.items():
        cells = [_fmt(v[k]["value"], "msg/s") if k in v else "-" for k in KINDS]
        lines.append(
            f"| {transport} | {shape} | {size} | {' | '.join(cells)} | "
            f"{_ratio_cell(v, 'microbroker', 'raw')} | "
            f"{_ratio_cell(v, 'microbroker', 'faststream')} |"
        )
    return [*lines, ""]


def latency_table(rows: list[dict[str, Any]]) -> list[str]:
    found = [r for r in rows if r["section"] == "latency"]
    if not found:
        return []
    lines = [
        "### Latency, one subscriber, 1 KiB, at a fixed publish rate",
        "",
        "| transport | variant | rate | p50 | p99 | p99.9 | samples |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in found:
        e = r["extra"]
        lines.append(
            f"| {r['transport']} | {r['variant']} | {r['shape'].split('@')[-1]} | "
            f"{e['p50']:,.0f} us | {e['p99']:,.0f} us | {e['p99.9']:,.0f} us | "
            f"{e['samples']:,.0f} |"
        )
    return [*lines, ""]


def _spread_cell(row: dict[str, Any], baseline: str) -> str:
    found = row.get("extra", {}).get(f"vs_{baseline}")
    if not found:
        return "-"
    if found.get("rounds", 0) > 1:
        return f"{found['median']:.2f}x ({found['min']:.2f}-{found['max']:.2f})"
    return f"{found['median']:.2f}x"


def simple_table(rows: list[dict[str, Any]], section: str, title: str, note: str) -> list[str]:
    found = [r for r in rows if r["section"] == section]
    if not found:
        return []
    with_ratio = any("vs_raw" in r.get("extra", {}) for r in found)
    lines = [
        f"### {title}",
        "",
        note,
        "",
        "| transport | variant | case | body | value |" + (" vs raw |" if with_ratio else ""),
        "| --- | --- | --- | --- | ---: |" + (" ---: |" if with_ratio else ""),
    ]
    for r in found:
        lines.append(
            f"| {r['transport']} | {r['variant']} | {r['shape']} | {r['size']} | "
            f"{_fmt(r['value'], r['unit'])} {r['unit'] if r['unit'] == 'msg/s' else ''} |"
            + (f" {_spread_cell(r, 'raw')} |" if with_ratio else "")
        )
    return [*lines, ""]


def _case_target(
    tp: dict[tuple[str, str, str], dict[str, Any]],
    transport: str,
    mine: str,
    other: str,
    goal: float,
    label: str,
) -> list[str]:
    """One row: ``mine`` over ``other`` in each case of ``transport`` at 128 B and 1 KiB,
    met when the lowest is at least ``goal``; no row when the run measured neither."""
    found = {
        (shape, size): x
        for (t, shape, size), v in tp.items()
        if t == transport
        and size in ("128B", "1KiB")
        and (x := ratio_of(v, mine, other)) is not None
    }
    if not found:
        return []
    each = ", ".join(f"{shape} {size} {x:.2f}x" for (shape, size), x in found.items())
    met = "yes" if min(found.values()) >= goal else "no"
    return [f"| {label} | {each} | {met} |"]


def _confluent_targets(tp: dict[tuple[str, str, str], dict[str, Any]]) -> list[str]:
    """microbroker-kafka on librdkafka (client="confluent") against both raw clients."""
    lines = []
    for other, label, goal in (
        ("raw", "raw aiokafka", 2.0),
        ("raw-confluent", "raw confluent-kafka", 0.8),
    ):
        lines += _case_target(
            tp,
            "kafka",
            "microbroker-confluent",
            other,
            goal,
            f"kafka: Event API on confluent >= {goal}x {label}",
        )
    return lines


def _jetstream_targets(tp: dict[tuple[str, str, str], dict[str, Any]]) -> list[str]:
    """JetStream's Event API against raw nats-py, acks awaited (sync) and in flight (async)."""
    lines = []
    for mine, raw, label in (
        ("microbroker", "raw", "js.publish"),
        ("microbroker-async", "raw-async", "js.publish_async"),
    ):
        lines += _case_target(
            tp,
            "nats-jetstream",
            mine,
            raw,
            0.95,
            f"nats-jetstream: Event API >= 0.95x raw {label}",
        )
    return lines


def _small_body_targets(tp: dict[tuple[str, str, str], dict[str, Any]]) -> list[str]:
    """rabbitmq and redis: the Event API >= 0.8x raw and >= 2x FastStream, 128 B and 1 KiB."""
    lines = []
    for transport in ("rabbitmq", "redis"):
        for other, label, goal in (("raw", "raw", 0.8), ("faststream", "FastStream", 2.0)):
            found = [
                x
                for (t, _, size), v in tp.items()
                if t == transport
                and size in ("128B", "1KiB")
                and (x := ratio_of(v, "microbroker", other)) is not None
            ]
            if found:
                lines.append(
                    f"| {transport}: Event API >= {goal}x {label} (128 B and 1 KiB) | "
                    f"min {min(found):.2f}x, median {sorted(found)[len(found) // 2]:.2f}x | "
                    f"{'yes' if min(found) >= goal else 'no'} |"
                )
    return lines


def _nats_core_targets(tp: dict[tuple[str, str, str], dict[str, Any]]) -> list[str]:
    """NATS core: the typed Event at >= 0.95x raw nats-py in every shape at 128 B and 1 KiB."""
    return _case_target(
        tp, "nats", "microbroker", "raw", 0.95, "nats: Event API >= 0.95x raw (128 B and 1 KiB)"
    )


def _rpc_targets(rows: list[dict[str, Any]]) -> list[str]:
    """RPC over NATS: calls/s with 64 callers >= 0.8x raw request/reply; p50 <= 1.2x raw."""
    lines = []
    for (_, shape, _), v in _measured(rows, "rpc").items():
        x = ratio_of(v, "microbroker", "raw")
        if x is None:
            continue
        if "p50" in shape:
            label, met = "call p50 <= 1.2x raw request/reply", x <= 1.2
        else:
            label, met = f"{shape} >= 0.8x raw request/reply", x >= 0.8
        lines.append(
            f"| RPC over NATS: {label} | {_ratio_cell(v, 'microbroker', 'raw')} | "
            f"{'yes' if met else 'no'} |"
        )
    return lines


def targets(rows: list[dict[str, Any]]) -> list[str]:
    """The issue's targets, each with the ratio measured in this run."""
    tp = _measured(rows, "throughput")
    lines = ["### Targets", "", "| target | measured | met |", "| --- | --- | --- |"]
    for transport in ("nats", "kafka", "mqtt"):
        raw = [
            x
            for (t, _, _), v in tp.items()
            if t == transport and (x := ratio_of(v, "microbroker", "raw")) is not None
        ]
        fs = [
            x
            for (t, _, _), v in tp.items()
            if t == transport and (x := ratio_of(v, "microbroker", "faststream")) is not None
        ]
        if raw:
            lines.append(
                f"| {transport}: Event API >= 0.8x raw (every shape) | "
                f"min {min(raw):.2f}x, median {sorted(raw)[len(raw) // 2]:.2f}x | "
                f"{'yes' if min(raw) >= 0.8 else 'no'} |"
            )
        if fs:
            lines.append(
                f"| {transport}: >= 5x FastStream (every shape) | "
                f"min {min(fs):.2f}x, median {sorted(fs)[len(fs) // 2]:.2f}x | "
                f"{'yes' if min(fs) >= 5 else 'no'} |"
            )
    lines += _nats_core_targets(tp)
    lines += _confluent_targets(tp)
    lines += _jetstream_targets(tp)
    lines += _small_body_targets(tp)
    naive: dict[str, dict[str, float]] = defaultdict(dict)
    for r in rows:
        if r["section"] == "http-naive":
            naive[r["size"]][r["variant"]] = r["value"]
    for size, v in naive.items():
        if "naive" in v and "microbroker" in v:
            x = v["microbroker"] / v["naive"]
            lines.append(
                f"| http {size}: >= 10x one POST per message | {x:.1f}x "
                f"(vs 64 POSTs in flight: {v['microbroker'] / v.get('naive-64', 1):.1f}x)"
                f" | {'yes' if x >= 10 else 'no'} |"
            )
    for r in rows:
        if r["section"] == "rss":
            lines.append(
                f"| {r['transport']}: RSS flat within 50 MB over {r['shape']} | "
                f"{r['value']:+.1f} MB | {'yes' if r['value'] <= 50 else 'no'} |"
            )
    lines += _rpc_targets(rows)
    return [*lines, ""]


def markdown(data: dict[str, Any]) -> str:
    rows = data["rows"]
    m = data["machine"]
    lines = [
        f"Run of {m['date']} on {m['cpu']} ({m['cpus']} CPUs, shared), Python {m['python']}, "
        f"{m['platform']}; {'quick mode' if data['quick'] else 'full run'}, "
        f"{data['repeat']} interleaved round(s) per case, {data['seconds']} s.",
        "",
    ]
    lines += targets(rows)
    lines += throughput_table(rows, "throughput", "Throughput publish -> deliver")
    lines += latency_table(rows)
    lines += simple_table(
        rows,
        "scaling",
        "Cost against subscribers and topics",
        "128 B bodies; deliveries per second, all topics and subscribers.",
    )
    lines += simple_table(
        rows,
        "http-naive",
        "http broker against one POST per message",
        "Subscriber in a child process. naive: one awaited POST per message "
        "(go-micro's http broker); naive-64: 64 POSTs in flight.",
    )
    lines += simple_table(
        rows,
        "rpc",
        "RPC over NATS",
        "p50 in microseconds (the best round); calls/s with 64 concurrent callers (the best "
        "round). raw: nats-py request/reply. Both measured in turn in each round (at least five "
        "in a full run); vs raw: the median of the rounds' ratios (lowest-highest).",
    )
    lines += simple_table(
        rows,
        "rss",
        "RSS over a long run",
        "Growth of the resident set from after warm-up to the end "
        "(peak in the JSON), one process publishing and subscribing.",
    )
    if data["notes"]:
        lines += ["### Notes", ""] + [f"- {n}" for n in data["notes"]] + [""]
    return "\n".join(lines)


def plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in data["rows"] if r["section"] == "throughput" and r["size"] == "128B"]
    cases = sorted(
        {(r["transport"], r["shape"]) for r in rows},
        key=lambda c: (c[0], ["1->1", "queue4", "fanout10"].index(c[1])),
    )
    fig, ax = plt.subplots(figsize=(12, 5))
    width = 0.27
    for i, kind in enumerate(KINDS):
        values = {(r["transport"], r["shape"]): r["value"] for r in rows if r["variant"] == kind}
        xs = [j + (i - 1) * width for j in range(len(cases))]
        ax.bar(xs, [values.get(c, 0) for c in cases], width, label=kind)
    ax.set_xticks(range(len(cases)))
    ax.set_xticklabels([f"{t}\n{s}" for t, s in cases], fontsize=8)
    ax.set_ylabel("deliveries / s (128 B)")
    ax.set_yscale("log")
    ax.set_title(f"microbroker throughput per broker, {data['machine']['date']} (shared 2-core)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def publish(data: dict[str, Any], table: str) -> None:
    plot(data, PLOT)
    head = DOC.read_text().split("<!-- results -->")[0] if DOC.exists() else ""
    DOC.write_text(
        head + "<!-- results -->\n\n" + table + "\n![throughput per broker]"
        "(benchmarks-throughput.png)\n"
    )
