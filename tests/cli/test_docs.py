"""``microbroker docs``: a service's AsyncAPI 3.0 document, written and served, as users run it."""

from __future__ import annotations

import json
import os
import signal
import socket
import textwrap
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from cli_support import REPO, Background, Cli
from support import asyncapi_rules

TESTS = REPO / "tests"
SHOP = "support.asyncapi_shop:service"


def official_validator() -> Any:
    """A validator of AsyncAPI's own JSON Schema for 3.0.0 (fetched by tox's commands_pre)."""
    import jsonschema

    path = os.environ.get("ASYNCAPI_SCHEMA")
    if not path or not Path(path).is_file():
        message = (
            f"AsyncAPI's JSON Schema is not at ASYNCAPI_SCHEMA={path!r}: run "
            "tests/support/fetch-asyncapi-schema.sh PATH (tox -e cli does)"
        )
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return jsonschema.Draft7Validator(json.loads(Path(path).read_text()))


def errors_of(validator: Any, doc: dict[str, Any]) -> list[str]:
    return [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message[:300]}"
        for error in validator.iter_errors(doc)
    ]


@pytest.fixture(scope="module")
def shop_json(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    registry = tmp_path_factory.mktemp("registry")
    result = Cli(registry).run("docs", SHOP, cwd=TESTS)
    assert result.code == 0, result
    doc: dict[str, Any] = json.loads(result.out)
    return doc


def test_docs_writes_a_document_valid_under_asyncapis_own_schema(
    shop_json: dict[str, Any],
) -> None:
    validator = official_validator()
    assert errors_of(validator, shop_json) == []
    assert asyncapi_rules.problems(shop_json) == []
    # The official schema is no rubber stamp: it rejects a document that breaks it.
    broken = json.loads(json.dumps(shop_json))
    broken["operations"]["bill"]["action"] = "publish"
    del broken["servers"]["http"]["host"]
    assert len(errors_of(validator, broken)) == 2


def test_docs_describes_the_service(shop_json: dict[str, Any]) -> None:
    assert shop_json["asyncapi"] == "3.0.0"
    assert shop_json["info"]["title"] == "shop"
    assert shop_json["servers"] == {
        "http": {
            "host": "127.0.0.1:0",
            "protocol": "http",
            "description": "The http broker, on a free port chosen when it connects.",
        }
    }
    channels = {channel["address"] for channel in shop_json["channels"].values()}
    assert {"orders.placed", "shipments", "orders.paid", "invoices.issued"} <= channels
    assert shop_json["operations"]["bill"]["x-microbroker-queue"] == "billing"
    assert shop_json["components"]["messages"]["Shipment"]["contentType"] == (
        "application/protobuf"
    )


def test_docs_yaml_is_the_same_document(cli: Cli, shop_json: dict[str, Any]) -> None:
    import yaml

    result = cli.run("docs", SHOP, "--yaml", cwd=TESTS)
    assert result.code == 0, result
    assert result.out.startswith("asyncapi: 3.0.0\n")
    assert yaml.safe_load(result.out) == shop_json


def test_docs_yaml_without_pyyaml_is_a_clear_usage_error(cli: Cli, tmp_path: Path) -> None:
    # A `yaml` package that does not import stands for PyYAML not being installed.
    blocker = tmp_path / "blocker" / "yaml"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('no PyYAML here')\n")
    env = {"PYTHONPATH": str(blocker.parent)}
    result = cli.run("docs", SHOP, "--yaml", cwd=TESTS, env=env)
    assert result.code == 2, result
    assert result.out == ""
    assert "YAML output needs PyYAML, which is not installed: pip install PyYAML" in result.err
    assert result.err.count("\n") == 1
    # JSON needs nothing more.
    assert cli.run("docs", SHOP, cwd=TESTS, env=env).code == 0


def test_docs_output_file_and_info_fields(cli: Cli, tmp_path: Path) -> None:
    out = tmp_path / "asyncapi.json"
    result = cli.run(
        "docs",
        SHOP,
        "--output",
        str(out),
        "--info-version",
        "1.4.0",
        "--description",
        "The shop.",
        cwd=TESTS,
    )
    assert result.code == 0, result
    assert result.out == ""
    doc = json.loads(out.read_text())
    assert doc["info"] == {"title": "shop", "version": "1.4.0", "description": "The shop."}
    result = cli.run(
        "docs", SHOP, "--output", str(tmp_path / "no" / "such" / "dir.json"), cwd=TESTS
    )
    assert result.code == 2, result
    assert "cannot write" in result.err


def test_docs_takes_the_broker_from_the_command_line(cli: Cli) -> None:
    result = cli.run("--broker", "memory", "docs", SHOP, "--address", "bus-1", cwd=TESTS)
    assert result.code == 0, result
    servers = json.loads(result.out)["servers"]
    assert servers == {
        "memory": {"protocol": "memory", "description": "The memory broker.", "host": "bus-1"}
    }
    env = {"MICRO_BROKER": "http", "MICRO_BROKER_ADDRESS": "127.0.0.1:8123"}
    servers = json.loads(cli.run("docs", SHOP, cwd=TESTS, env=env).out)["servers"]
    assert servers["http"]["host"] == "127.0.0.1:8123"


def write_app(folder: Path) -> Path:
    (folder / "app.py").write_text(
        textwrap.dedent(
            '''
            import dataclasses
            import microbroker

            @dataclasses.dataclass
            class Ping:
                n: int

            def make_service():
                service = microbroker.Service("made")

                @service.subscriber("pings")
                async def on_ping(ping: Ping) -> None:
                    """Answers pings."""

                return service

            async def make_later():
                return make_service()

            class Holder:
                service = make_service()

            def broken():
                raise RuntimeError("the database is down")

            not_a_service = 42
            '''
        )
    )
    (folder / "crashes.py").write_text("raise ValueError('bad config')\n")
    (folder / "imports_missing.py").write_text("import no_such_dependency_xyz\n")
    return folder


@pytest.mark.parametrize("target", ["app:make_service()", "app:make_later()", "app:Holder.service"])
def test_docs_finds_the_service_through_factories_and_attributes(
    cli: Cli, tmp_path: Path, target: str
) -> None:
    result = cli.run("docs", target, cwd=write_app(tmp_path))
    assert result.code == 0, result
    # --app-dir: from elsewhere, the same.
    elsewhere = cli.run("docs", target, "--app-dir", str(tmp_path), cwd=REPO)
    assert elsewhere.code == 0, elsewhere
    assert elsewhere.out == result.out
    doc = json.loads(result.out)
    assert doc["info"]["title"] == "made"
    assert doc["operations"]["on_ping"]["summary"] == "Answers pings."
    assert doc["components"]["schemas"]["Ping"]["required"] == ["n"]


@pytest.mark.parametrize(
    ("target", "code", "message"),
    [
        ("app", 2, "expected MODULE:SERVICE"),
        ("app.py:service", 2, "is a path"),
        ("nowhere:service", 2, "no module named 'nowhere'"),
        ("app:missing", 2, "module 'app' has no attribute 'missing'"),
        ("app:not_a_service", 2, "app:not_a_service is a builtins.int, not a microbroker.Service"),
        ("app:make_service", 2, "(to call it: app:make_service())"),
        ("app:broken()", 2, "app:broken() failed: RuntimeError: the database is down"),
        ("crashes:service", 2, "importing 'crashes' failed: ValueError: bad config"),
        (
            "imports_missing:service",
            2,
            "importing 'imports_missing' failed: ModuleNotFoundError: No module named "
            "'no_such_dependency_xyz'",
        ),
    ],
)
def test_docs_says_what_is_wrong_with_the_target(
    cli: Cli, tmp_path: Path, target: str, code: int, message: str
) -> None:
    result = cli.run("docs", target, cwd=write_app(tmp_path))
    assert result.code == code, result
    assert result.out == ""
    assert result.err.startswith("microbroker docs: error: "), result
    assert message in result.err, result
    assert "Traceback" not in result.err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["docs", "serve"], "docs serve needs the service"),
        (["docs", "serve", SHOP, "--yaml"], "--yaml and --output are options of `docs`"),
        (["docs", SHOP, "--port", "8000"], "--host and --port are options of `docs serve`"),
        (["docs", SHOP, "-o", "x=1"], "--option cannot reach it"),
        (["docs", "a:b", "c:d"], "expected MODULE:SERVICE or serve MODULE:SERVICE"),
    ],
)
def test_docs_usage_errors(cli: Cli, args: list[str], message: str) -> None:
    result = cli.run(*args, cwd=TESTS)
    assert result.code == 2, result
    assert message in result.err, result


# docs serve ------------------------------------------------------------------------


def serve(cli: Cli, background: list[Background], *args: str) -> tuple[Background, str]:
    proc = cli.start("docs", "serve", SHOP, *args, cwd=TESTS)
    background.append(proc)
    proc.wait_for(lambda: proc.stdout.endswith("\n"), "the URL on stdout")
    return proc, proc.stdout.strip()


def get(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_serve_prints_its_url_and_serves_the_page_and_the_document(
    cli: Cli, background: list[Background], shop_json: dict[str, Any]
) -> None:
    proc, url = serve(cli, background)
    assert url.startswith("http://127.0.0.1:"), url
    assert url.endswith("/")
    proc.wait_stderr("serving the AsyncAPI page of 'shop' (6 channel(s))")
    status, headers, body = get(url)
    assert status == 200
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    page = body.decode()
    assert page.startswith("<!doctype html>")
    assert '<script type="application/json" id="asyncapi-document">' in page
    status, headers, body = get(url + "asyncapi.json")
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body) == shop_json
    status, _, body = get(url + "asyncapi.yaml")
    assert status == 200
    assert body.startswith(b"asyncapi: 3.0.0\n")
    assert get(url + "elsewhere")[0] == 404
    # SIGTERM ends it as Ctrl-C does: exit 0.
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.finish() == 0


def test_serve_ends_on_ctrl_c_with_exit_0(cli: Cli, background: list[Background]) -> None:
    proc, url = serve(cli, background)
    assert get(url)[0] == 200
    proc.proc.send_signal(signal.SIGINT)
    assert proc.finish() == 0


def test_serve_on_a_given_port_and_on_a_taken_one(cli: Cli, background: list[Background]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        taken = sock.getsockname()[1]
        result = cli.run("docs", "serve", SHOP, "--port", str(taken), cwd=TESTS)
        assert result.code == 3, result
        assert f"cannot serve on 127.0.0.1:{taken}" in result.err
    # Now free (nothing listens): serve there.
    _, url = serve(cli, background, "--port", str(taken))
    assert url == f"http://127.0.0.1:{taken}/"
    assert get(url)[0] == 200


def test_serve_on_ipv6_loopback(cli: Cli, background: list[Background]) -> None:
    proc, url = serve(cli, background, "--host", "::1")
    assert url.startswith("http://[::1]:"), url
    assert get(url)[0] == 200
    assert "warning" not in proc.stderr
