"""The command line in one process: help, plugins, broker selection, bad data, bench."""

from __future__ import annotations

import importlib.metadata
import json
import socket
from pathlib import Path

from cli_support import Cli

VERSION = importlib.metadata.version("microbroker")


def test_help_documents_commands_exit_codes_and_environment(cli: Cli) -> None:
    result = cli.run("--help")
    assert result.code == 0, result
    for word in ("plugins", "publish", "subscribe", "call", "bench"):
        assert word in result.out
    assert "    run  " in result.out
    assert "serve a microbroker.Service" in result.out
    assert "exit codes:" in result.out
    assert "MICRO_BROKER_ADDRESS" in result.out


def test_no_command_is_a_usage_error(cli: Cli) -> None:
    result = cli.run()
    assert result.code == 2, result
    assert "required: COMMAND" in result.err


def test_plugins_lists_the_core_builtins_with_distribution_and_version(cli: Cli) -> None:
    result = cli.run("plugins")
    assert result.code == 0, result
    lines = result.out.splitlines()
    assert lines[0].split() == ["KIND", "NAME", "DISTRIBUTION", "VERSION"]
    rows = {tuple(line.split()[:2]): line.split() for line in lines[2:] if line.strip()}
    # The default broker is http, marked as the selected one.
    assert rows[("broker", "http")] == ["broker", "http", "*", "microbroker", VERSION]
    assert rows[("broker", "memory")] == ["broker", "memory", "microbroker", VERSION]
    assert ("codec", "application/json") in rows
    assert ("codec", "application/protobuf") in rows
    assert ("registry", "local") in rows
    assert ("client", "default") in rows
    assert ("server", "default") in rows
    assert "failed to load" not in result.out


def test_plugins_marks_the_broker_the_environment_selects(cli: Cli) -> None:
    result = cli.run("plugins", "--json", env={"MICRO_BROKER": "memory"})
    assert result.code == 0, result
    data = json.loads(result.out)
    selected = [row["name"] for row in data["plugins"] if row["selected"]]
    assert selected == ["memory"]
    assert data["errors"] == []
    # --broker wins over the environment.
    data = json.loads(cli.run("--broker", "http", "plugins", "--json").out)
    assert [row["name"] for row in data["plugins"] if row["selected"]] == ["http"]


def test_plugins_reports_a_plugin_that_fails_to_import(cli: Cli, tmp_path: Path) -> None:
    # An installed distribution whose entry point names a module that does not import.
    site = tmp_path / "site"
    info = site / "microbroker_broken_cli-1.2.3.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: microbroker-broken-cli\nVersion: 1.2.3\n"
    )
    (info / "entry_points.txt").write_text("[microbroker]\nbroken = broken_cli_plugin\n")
    (site / "broken_cli_plugin.py").write_text("raise ImportError('needs libfoo 9')\n")
    result = cli.run("plugins", env={"PYTHONPATH": str(site)})
    assert result.code == 0, result
    assert "1 plugin(s) failed to load:" in result.out
    assert "microbroker-broken-cli" in result.out
    assert "needs libfoo 9" in result.out
    # The other plugins still work.
    assert "memory" in result.out
    # Selecting what the broken plugin would provide names the distribution at fault.
    result = cli.run("--broker", "broken", "publish", "t", "x", env={"PYTHONPATH": str(site)})
    assert result.code == 2, result
    assert "microbroker-broken-cli" in result.err


def test_unknown_broker_exits_2_and_names_the_closest(cli: Cli) -> None:
    result = cli.run("--broker", "memroy", "publish", "t", "x")
    assert result.code == 2, result
    assert result.out == ""
    assert "no broker named 'memroy' is installed" in result.err
    assert "Did you mean 'memory'?" in result.err
    assert "Installed brokers: http, memory" in result.err
    # The same from the environment, and after the command name.
    result = cli.run("subscribe", "t", "--count", "1", env={"MICRO_BROKER": "htpp"})
    assert result.code == 2, result
    assert "Did you mean 'http'?" in result.err
    result = cli.run("bench", "--broker", "nats")
    assert result.code == 2, result
    assert "pip install microbroker-nats" in result.err


def test_bad_broker_option_exits_2(cli: Cli) -> None:
    result = cli.run("-b", "memory", "-o", "no_such_option=1", "publish", "t", "x")
    assert result.code == 2, result
    assert "does not take option(s) no_such_option" in result.err
    result = cli.run("-b", "memory", "-o", "not an option", "publish", "t", "x")
    assert result.code == 2, result
    assert "--option takes KEY=VALUE" in result.err


def test_bad_data_exits_2_and_says_why(cli: Cli, tmp_path: Path) -> None:
    result = cli.run("-b", "memory", "publish", "t", "{not json", "-t", "application/json")
    assert result.code == 2, result
    assert "DATA is not valid JSON" in result.err
    result = cli.run("-b", "memory", "publish", "t", f"@{tmp_path / 'missing.json'}")
    assert result.code == 2, result
    assert "cannot read" in result.err
    assert "missing.json" in result.err
    result = cli.run("-b", "memory", "publish", "t", "x", "--header", "no-equals-sign")
    assert result.code == 2, result
    assert "--header takes NAME=VALUE" in result.err
    result = cli.run("-b", "memory", "publish", "t", "-", "-t", "application/json", input=b"[1,")
    assert result.code == 2, result
    assert "not valid JSON" in result.err
    result = cli.run("-b", "memory", "call", "greeter", "Greeter.Hello", "{name: 'x'}")
    assert result.code == 2, result
    assert "JSON is not valid JSON" in result.err
    result = cli.run("-b", "memory", "call", "greeter", "Hello", "{}")
    assert result.code == 2, result
    assert "'Handler.Method'" in result.err
    result = cli.run("-b", "memory", "bench", "-n", "0")
    assert result.code == 2, result
    assert "must be 1 or more" in result.err


def test_invalid_topic_exits_2(cli: Cli) -> None:
    result = cli.run("-b", "memory", "publish", "", "x")
    assert result.code == 2, result
    assert "topic" in result.err.lower()


def test_publish_on_memory_warns_that_no_other_process_receives_it(cli: Cli) -> None:
    result = cli.run("-b", "memory", "publish", "orders", '{"id": 1}')
    assert result.code == 0, result
    assert "published 9 bytes on 'orders' via memory" in result.out
    assert "in-process" in result.err


def test_http_broker_that_cannot_listen_exits_3(cli: Cli) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        result = cli.run("--address", address, "subscribe", "t", "--count", "1")
        assert result.code == 3, result
        assert f"cannot connect to the http broker at {address}" in result.err
        assert "address already in use" in result.err.lower()
        # MICRO_BROKER_ADDRESS is honoured the same way.
        result = cli.run("subscribe", "t", "--count", "1", env={"MICRO_BROKER_ADDRESS": address})
        assert result.code == 3, result
        assert address in result.err


def test_call_with_no_service_running_exits_1(cli: Cli) -> None:
    result = cli.run("call", "nobody", "Nobody.Hello", "{}", "--timeout", "2")
    assert result.code == 1, result
    assert '"code": 503' in result.err
    assert "nobody" in result.err


def test_call_on_memory_without_a_server_times_out_with_exit_4(cli: Cli) -> None:
    result = cli.run("-b", "memory", "call", "nobody", "Nobody.Hello", "{}", "--timeout", "0.5")
    # The memory broker cannot tell that nobody subscribes: the call waits for its deadline.
    assert result.code == 4, result
    assert "timed out after 0.5s" in result.err


def test_bench_on_memory_reports_throughput_and_latency(cli: Cli) -> None:
    result = cli.run("-b", "memory", "bench", "-n", "2000", "-s", "64", "--json")
    assert result.code == 0, result
    data = json.loads(result.out)
    assert data["broker"] == "memory"
    assert data["messages"] == 2000
    assert data["size"] == 64
    assert data["duplicates"] == 0
    assert data["deliver_per_second"] > 0
    assert data["publish_per_second"] > 0
    lat = data["latency_ms"]
    assert 0 <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    # Progress goes to stderr: plain lines when it is not a terminal.
    assert "bench: 100% (2000/2000 delivered)" in result.err


def test_bench_table_output(cli: Cli) -> None:
    result = cli.run("-b", "memory", "bench", "-n", "100")
    assert result.code == 0, result
    names = [line.split()[0] for line in result.out.splitlines()]
    assert names == ["broker", "messages", "publish", "deliver", "latency", "duplicates"]
