"""The command line between processes over the http broker (the default: MICRO_BROKER unset)."""

from __future__ import annotations

import json
import signal
import socket
from pathlib import Path

from cli_support import GREETER, Background, Cli

LIVE = "subscribed to"


def subscriber(cli: Cli, background: list[Background], *args: str) -> Background:
    proc = cli.start("subscribe", *args)
    background.append(proc)
    proc.wait_stderr(LIVE)
    return proc


def test_publish_reaches_a_subscriber_in_another_process(
    cli: Cli, background: list[Background], tmp_path: Path
) -> None:
    sub = subscriber(cli, background, "orders", "--count", "3", "--timeout", "60")
    assert "on http at 127.0.0.1:" in sub.stderr

    result = cli.run("publish", "orders", '{"id": 1, "item": "tea"}', "-H", "tenant=a")
    assert result.code == 0, result
    assert "published 24 bytes on 'orders' via http" in result.out
    data = tmp_path / "note.txt"
    data.write_text("from a file\n")
    result = cli.run("publish", "orders", f"@{data}", "--header", "Priority: high")
    assert result.code == 0, result
    result = cli.run("publish", "orders", "-", input=b"\x00\x01\xffbinary")
    assert result.code == 0, result

    assert sub.finish() == 0, sub.stderr
    blocks = sub.stdout.split("\n\n")
    first, second, third = blocks[0], blocks[1], blocks[2]
    assert first.splitlines()[0] == "#1 orders"
    assert "  Content-Type: application/json" in first
    assert "  Micro-Topic: orders" in first
    assert "  tenant: a" in first
    assert "  Micro-ID: " in first
    assert '"item": "tea"' in first  # JSON pretty-printed
    assert second.splitlines()[0] == "#2 orders"
    assert "  Content-Type: text/plain; charset=utf-8" in second
    assert "  Priority: high" in second
    assert second.splitlines()[-1] == "from a file"
    assert third.splitlines()[0] == "#3 orders"
    assert "  Content-Type: application/octet-stream" in third
    assert "(9 bytes, base64) AAH/YmluYXJ5" in third


def test_subscribe_json_output_and_content_type(cli: Cli, background: list[Background]) -> None:
    sub = subscriber(cli, background, "events", "--count", "1", "--json", "--timeout", "60")
    result = cli.run("publish", "events", "a,b\n1,2", "--content-type", "text/csv", "-q")
    assert result.code == 0, result
    assert result.out == ""
    assert sub.finish() == 0, sub.stderr
    record = json.loads(sub.stdout)
    assert record["topic"] == "events"
    assert record["queue"] is None
    assert record["attempt"] == 1
    assert record["headers"]["Content-Type"] == "text/csv"
    assert record["encoding"] == "text"
    assert record["body"] == "a,b\n1,2"


def test_queue_group_shares_messages_and_ctrl_c_exits_0(
    cli: Cli, background: list[Background]
) -> None:
    first = subscriber(cli, background, "jobs", "--queue", "workers", "--json")
    second = subscriber(cli, background, "jobs", "--queue", "workers", "--json")
    watcher = subscriber(cli, background, "jobs", "--json")
    for n in range(6):
        result = cli.run("publish", "jobs", json.dumps({"n": n}), "-q")
        assert result.code == 0, result

    def received(proc: Background) -> list[int]:
        return [json.loads(line)["body"]["n"] for line in proc.stdout.splitlines()]

    watcher.wait_for(lambda: len(received(watcher)) == 6, "6 broadcast deliveries")
    first.wait_for(lambda: len(received(first)) + len(received(second)) >= 6, "6 shared")
    for proc in (first, second, watcher):
        proc.proc.send_signal(signal.SIGINT)
        assert proc.finish() == 0, proc.stderr
    # Every message went to exactly one member of the group, and all to the watcher.
    assert sorted(received(first) + received(second)) == list(range(6))
    assert sorted(received(watcher)) == list(range(6))
    assert all(json.loads(line)["queue"] == "workers" for line in first.stdout.splitlines())


def test_publish_with_no_subscriber_exits_1(cli: Cli) -> None:
    result = cli.run("publish", "nobody.listens", "x")
    assert result.code == 1, result
    assert "no subscriber for topic 'nobody.listens'" in result.err


def test_subscriber_at_a_dead_address_fails_the_publish(
    cli: Cli, background: list[Background]
) -> None:
    # A live subscriber whose advertised address refuses connections.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{probe.getsockname()[1]}"
    subscriber(cli, background, "-o", f"advertise={dead}", "lost", "--timeout", "60")
    result = cli.run("publish", "lost", "x", "-o", "max_deliver=2", "-o", "connect_timeout=1")
    assert result.code == 1, result
    assert "given up after 2 deliveries" in result.err
    result = cli.run("publish", "lost", "x", "--timeout", "1")
    assert result.code == 4, result
    assert "did not complete within 1s" in result.err
    assert "Traceback" not in result.err
    assert "Unclosed" not in result.err


def test_subscribe_timeout_before_count_exits_4(cli: Cli) -> None:
    result = cli.run("subscribe", "quiet", "--count", "2", "--timeout", "0.5")
    assert result.code == 4, result
    assert "timed out after 0.5s with 0 of 2 message(s)" in result.err


def test_call_the_greeter_service_in_another_process(
    cli: Cli, background: list[Background]
) -> None:
    service = cli.start_python("service.py", cwd=GREETER)
    background.append(service)
    service.wait_stdout("greeter serving on the http broker")
    # The service registers as it starts: the CLI's --retries covers that window.
    result = cli.run("call", "greeter", "Greeter.Hello", '{"name": "Ada"}', "--retries", "5")
    assert result.code == 0, result
    assert json.loads(result.out) == {"message": "Hello, Ada!"}

    result = cli.run(
        "call", "greeter", "Greeter.Hello", '{"name": "Ada"}', "-m", "language=fr", "--compact"
    )
    assert result.code == 0, result
    assert result.out == '{"message":"Bonjour, Ada!"}\n'

    result = cli.run("call", "greeter", "Greeter.Hello", '{"name": ""}')
    assert result.code == 1, result
    assert '"code": 400' in result.err
    assert "a name is required" in result.err

    result = cli.run("call", "greeter", "Greeter.Nope", "{}")
    assert result.code == 1, result
    assert '"code": 404' in result.err


def test_bench_over_http(cli: Cli) -> None:
    result = cli.run("bench", "-n", "300", "-s", "32", "--json")
    assert result.code == 0, result
    data = json.loads(result.out)
    assert data["broker"] == "http"
    assert data["messages"] == 300
    assert data["duplicates"] == 0
    assert "via http at 127.0.0.1:" in result.err
    assert "bench: 100% (300/300 delivered)" in result.err
