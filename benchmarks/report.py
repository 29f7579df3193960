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


def throughput_table(rows: list[dict[str, Any]], section: str, title: str) -> list[str]:
    grouped: dict[tuple[str, str, str], dict[str, float]] = defaultdict(dict)
    for r in rows:
        if r["section"] == section:
            grouped[(r["transport"], r["shape"], r["size"])][r["variant"]] = r["value"]
    if not grouped:
        return []
    lines = [
        f"### {title}",
        "",
        "Deliveries per second (a fan-out of ten counts ten per message); "
        "ratios are microbroker's rate over the other's.",
        "",
        "| transport | shape | body | raw | microbroker | FastStream | vs raw | vs FastStream |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for (transport, shape, size), v in grouped.items():
        cells = [_fmt(v[k], "msg/s") if k in v else "-" for k in KINDS]
        mb = v.get("microbroker")
        lines.append(
            f"| {transport} | {shape} | {size} | {' | '.join(cells)} | "
            f"{_ratio(mb, v.get('raw'))} | {_ratio(mb, v.get('faststream'))} |"
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


def simple_table(rows: list[dict[str, Any]], section: str, title: str, note: str) -> list[str]:
    found = [r for r in rows if r["section"] == section]
    if not found:
        return []
    lines = [
        f"### {title}",
        "",
        note,
        "",
        "| transport | variant | case | body | value |",
        "| --- | --- | --- | --- | ---: |",
    ]
    for r in found:
        lines.append(
            f"| {r['transport']} | {r['variant']} | {r['shape']} | {r['size']} | "
            f"{_fmt(r['value'], r['unit'])} {r['unit'] if r['unit'] == 'msg/s' else ''} |"
        )
    return [*lines, ""]


def _confluent_targets(tp: dict[tuple[str, str, str], dict[str, float]]) -> list[str]:
    """microbroker-kafka on librdkafka (client="confluent") against both raw clients."""
    lines = []
    for other, label, goal in (
        ("raw", "raw aiokafka", 2.0),
        ("raw-confluent", "raw confluent-kafka", 0.8),
    ):
        found = {
            (shape, size): v["microbroker-confluent"] / v[other]
            for (t, shape, size), v in tp.items()
            if t == "kafka"
            and size in ("128B", "1KiB")
            and other in v
            and "microbroker-confluent" in v
        }
        if found:
            each = ", ".join(f"{shape} {size} {x:.2f}x" for (shape, size), x in found.items())
            met = "yes" if min(found.values()) >= goal else "no"
            lines.append(f"| kafka: Event API on confluent >= {goal}x {label} | {each} | {met} |")
    return lines


def _small_body_targets(tp: dict[tuple[str, str, str], dict[str, float]]) -> list[str]:
    """redis: the Event API >= 0.8x raw redis-py and >= 2x FastStream, at 128 B and 1 KiB."""
    lines = []
    for other, label, goal in (("raw", "raw", 0.8), ("faststream", "FastStream", 2.0)):
        found = [
            v["microbroker"] / v[other]
            for (t, _, size), v in tp.items()
            if t == "redis" and size in ("128B", "1KiB") and other in v and "microbroker" in v
        ]
        if found:
            lines.append(
                f"| redis: Event API >= {goal}x {label} (128 B and 1 KiB) | "
                f"min {min(found):.2f}x, median {sorted(found)[len(found) // 2]:.2f}x | "
                f"{'yes' if min(found) >= goal else 'no'} |"
            )
    return lines


def targets(rows: list[dict[str, Any]]) -> list[str]:
    """The issue's targets, each with the ratio measured in this run."""
    tp: dict[tuple[str, str, str], dict[str, float]] = defaultdict(dict)
    for r in rows:
        if r["section"] == "throughput":
            tp[(r["transport"], r["shape"], r["size"])][r["variant"]] = r["value"]
    lines = ["### Targets", "", "| target | measured | met |", "| --- | --- | --- |"]
    for transport in ("nats", "kafka", "mqtt"):
        raw = [
            v["microbroker"] / v["raw"]
            for (t, _, _), v in tp.items()
            if t == transport and "raw" in v and "microbroker" in v
        ]
        fs = [
            v["microbroker"] / v["faststream"]
            for (t, _, _), v in tp.items()
            if t == transport and "faststream" in v and "microbroker" in v
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
    lines += _confluent_targets(tp)
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
    rpc = {r["variant"]: r for r in rows if r["section"] == "rpc" and "p50" in r["shape"]}
    if "raw" in rpc and "microbroker" in rpc:
        x = rpc["microbroker"]["value"] / rpc["raw"]["value"]
        lines.append(
            f"| RPC over NATS: call p50 within 1.5x raw request/reply | {x:.2f}x | "
            f"{'yes' if x <= 1.5 else 'no'} |"
        )
    return [*lines, ""]


def markdown(data: dict[str, Any]) -> str:
    rows = data["rows"]
    m = data["machine"]
    lines = [
        f"Run of {m['date']} on {m['cpu']} ({m['cpus']} CPUs, shared), Python {m['python']}, "
        f"{m['platform']}; {'quick mode' if data['quick'] else 'full run'}, best of "
        f"{data['repeat']}, {data['seconds']} s.",
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
        "p50 in microseconds; calls/s with 64 concurrent callers. raw: nats-py request/reply.",
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
