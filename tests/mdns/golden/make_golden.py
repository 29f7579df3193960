"""Write txt_records.json: go-micro TXT records made by Go itself (gomicro_txt.go), for test_txt.py.

Run it with a Go toolchain on PATH: ``python tests/mdns/golden/make_golden.py``.
The cases avoid ``\\b`` and ``\\f``, which Go before 1.22 escaped differently
(test_txt.py checks those by the rule of Go 1.22 and later, which go-micro needs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
SERVICE = "micro.http.broker"

CASES: list[dict[str, object]] = [
    {
        "name": "go-micro http broker, broadcast subscription",
        "service": SERVICE,
        "version": "ff.http.broadcast",
        "metadata": {"secure": "false", "broker": "http", "topic": "orders"},
    },
    {
        "name": "microbroker http broker, queue group, dotted topic",
        "service": SERVICE,
        "version": "billing",
        "metadata": {
            "secure": "true",
            "broker": "http",
            "topic": "orders.created",
            "microbroker": "batch/1",
        },
    },
    {
        "name": "many strings: a record over 255 hex characters",
        "service": SERVICE,
        "version": "workers",
        "metadata": {
            f"k{i:02d}": f"{(i * 2654435761) % 4294967296:08x}-{(i * 40503) % 65536:04x}"
            for i in range(24)
        },
    },
    {
        "name": "escaping: HTML characters, line separators, controls, non-ASCII",
        "service": "svc<&>",
        "version": "v\u2028\u2029",
        "metadata": {
            "html": "<b>&amp;</b>",
            "quote": 'say "hi" \\ there',
            "controls": "\n\r\t\x00\x01\x1f\x7f",
            "unicode": "\u00e9\u65e5\u672c\U0001f600",
        },
    },
    {
        "name": "map keys sorted as bytes",
        "service": "sorting",
        "version": "1",
        "metadata": {"b": "1", "a": "2", "B": "3", "\u00e9": "4", "aa": "5", "": "6", "Z": "7"},
    },
    {
        "name": "nil metadata and empty version",
        "service": "bare",
        "version": "",
        "metadata": None,
        "decode_only": True,
    },
    {
        "name": "a go-micro RPC service with endpoints",
        "service": "greeter",
        "version": "latest",
        "metadata": {"registry": "mdns", "server": "grpc", "transport": "grpc", "protocol": "grpc"},
        "endpoints": [
            {
                "name": "Greeter.Hello",
                "request": {
                    "name": "Request",
                    "type": "Request",
                    "values": [{"name": "name", "type": "string", "values": None}],
                },
                "response": {
                    "name": "Response",
                    "type": "Response",
                    "values": [{"name": "msg", "type": "string", "values": None}],
                },
                "metadata": {"stream": "false"},
            }
        ],
    },
]


def run_go(mode: str, lines: list[dict[str, object]]) -> list[dict[str, object]]:
    env = {**os.environ, "GOPROXY": "off", "GOFLAGS": "", "GOTOOLCHAIN": "local"}
    with tempfile.TemporaryDirectory() as cache:
        env.setdefault("GOCACHE", cache)
        done = subprocess.run(
            ["go", "run", str(HERE / "gomicro_txt.go"), mode],
            input="".join(json.dumps(line) + "\n" for line in lines),
            capture_output=True,
            text=True,
            check=True,
            env=env,
            timeout=300,
        )
    return [json.loads(line) for line in done.stdout.splitlines()]


def main() -> int:
    version = subprocess.run(
        ["go", "run", str(HERE / "gomicro_txt.go"), "version"],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
        env={**os.environ, "GOPROXY": "off", "GOTOOLCHAIN": "local"},
    ).stdout.strip()
    results = run_go("encode", CASES)
    golden = []
    for case, result in zip(CASES, results, strict=True):
        if "error" in result:
            print(f"{case['name']}: {result['error']}", file=sys.stderr)
            return 1
        golden.append({**case, "go_strings": result["strings"], "go_json": result["json"]})
    (HERE / "txt_records.json").write_text(
        json.dumps({"go_version": version, "records": golden}, indent=1, ensure_ascii=True) + "\n"
    )
    print(f"wrote {len(golden)} records made by {version}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
