"""``microbroker docs serve``'s page in headless Chromium: what it shows; that it asks for nothing.

The page is served by the real command; Chromium loads it and runs its script
(``--dump-dom`` prints the DOM after that); its net log says what it requested.
"""

from __future__ import annotations

import json
import re
import textwrap
import threading
import urllib.request
from collections.abc import Iterator
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from cli_support import REPO, Background, Cli
from support import asyncapi_rules, chromium

TESTS = REPO / "tests"
SHOP = "support.asyncapi_shop:service"


class Elements(HTMLParser):
    """Every element of a DOM dump: its tag and attributes, in document order."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, {name: value or "" for name, value in attrs}))

    def having(self, attribute: str) -> list[dict[str, str]]:
        return [attrs for _, attrs in self.elements if attribute in attrs]


def serve(cli: Cli, background: list[Background], target: str, cwd: Path) -> str:
    proc = cli.start("docs", "serve", target, cwd=cwd)
    background.append(proc)
    proc.wait_for(lambda: proc.stdout.endswith("\n"), "the URL on stdout")
    return proc.stdout.strip()


def fetch_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=30) as response:
        doc: dict[str, Any] = json.load(response)
        return doc


@pytest.fixture(scope="module")
def shop_page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The shop's page, served by `docs serve` and loaded once by Chromium."""
    chromium.binary()
    tmp = tmp_path_factory.mktemp("page")
    registry = tmp / "registry"
    registry.mkdir()
    cli = Cli(registry)
    procs: list[Background] = []
    try:
        url = serve(cli, procs, SHOP, TESTS)
        net_log = tmp / "net-log.json"
        dom = chromium.dump_dom(url, tmp / "profile", net_log=net_log)
        with urllib.request.urlopen(url, timeout=30) as response:
            served = response.read().decode()
        yield {
            "url": url,
            "dom": dom,
            "elements": Elements(dom),
            "doc": fetch_json(url + "asyncapi.json"),
            "net_log": net_log,
            "served": served,
        }
    finally:
        for proc in procs:
            proc.stop()


def test_the_page_shows_each_channel_with_its_operations(shop_page: dict[str, Any]) -> None:
    elements: Elements = shop_page["elements"]
    doc = shop_page["doc"]
    assert any(attrs.get("data-rendered") == "true" for tag, attrs in elements.elements)
    shown = [attrs["data-channel"] for attrs in elements.having("data-channel")]
    assert shown == [channel["address"] for channel in doc["channels"].values()]
    operations = {
        attrs["data-operation"]: attrs["data-action"] for attrs in elements.having("data-operation")
    }
    assert operations == {name: op["action"] for name, op in doc["operations"].items()}
    queues = [attrs["data-queue"] for attrs in elements.having("data-queue")]
    assert queues == ["billing", "warehouse"]
    content_types = [attrs["data-content-type"] for attrs in elements.having("data-content-type")]
    assert "application/protobuf" in content_types
    assert "application/json" in content_types
    servers = [attrs["data-server"] for attrs in elements.having("data-server")]
    assert servers == ["http"]
    assert "127.0.0.1:0" in shop_page["dom"]


def _message_fields(elements: Elements) -> dict[str, dict[str, dict[str, str]]]:
    """Message id -> field path -> the row's attributes, for the channels' messages."""
    fields: dict[str, dict[str, dict[str, str]]] = {}
    current: str | None = None
    for _, attrs in elements.elements:
        if "data-message" in attrs:
            current = attrs["data-message"]
            fields.setdefault(current, {})
        elif "data-schema" in attrs:
            current = None  # the schemas section: not a message
        elif "data-field" in attrs and current is not None:
            fields[current][attrs["data-field"]] = attrs
    return fields


def test_the_page_shows_every_payload_field_its_type_and_whether_it_is_required(
    shop_page: dict[str, Any],
) -> None:
    doc = shop_page["doc"]
    fields = _message_fields(shop_page["elements"])
    # Every top-level field of every message's payload, with its required flag.
    for name, message in doc["components"]["messages"].items():
        payload = asyncapi_rules.deref(doc, message["payload"])
        for field in payload.get("properties", {}):
            row = fields[name].get(field)
            assert row is not None, f"{name}.{field} is not on the page"
            required = field in payload.get("required", [])
            assert row["data-required"] == str(required).lower(), (name, field, row)
    order = fields["OrderPlaced"]
    expected = {
        "id": ("string (uuid)", "true"),
        "lines": ("array of OrderLine", "true"),
        # Nested fields, reached through the list and the $refs.
        "lines[].sku": ("string", "true"),
        "lines[].price": ("Money", "true"),
        "lines[].price.amount": ("string (decimal)", "true"),
        "lines[].price.currency": ("string", "false"),
        "placed_at": ("string (date-time)", "true"),
        "status": ("Status", "false"),
        "note": ("string | null", "false"),
        "priority": ("Priority | null", "false"),
        "attributes": ("map of string \u2192 string", "false"),
        "totals{}.amount": ("string (decimal)", "true"),
    }
    for path, (kind, required) in expected.items():
        assert (order[path]["data-type"], order[path]["data-required"]) == (kind, required), path
    shipment = fields["Shipment"]
    assert shipment["parcels"]["data-type"] == "array of shop.v1.Parcel"
    assert shipment["parcels[].weight_kg"]["data-type"] == "number (double)"
    assert shipment["carrier"]["data-type"] == "shop.v1.Carrier"
    assert shipment["weight_grams"]["data-type"] == "integer (uint64)"
    assert shipment["address.city"]["data-type"] == "string"
    assert fields["Refund"]["reason"]["data-required"] == "false"
    # A raw subscriber's message is one row: the whole payload, of any type.
    assert fields["RawMessage"][""]["data-type"] == "any"
    schemas = [attrs["data-schema"] for attrs in shop_page["elements"].having("data-schema")]
    assert schemas == list(doc["components"]["schemas"])


def test_the_page_makes_no_request_but_its_own(shop_page: dict[str, Any], tmp_path: Path) -> None:
    url = shop_page["url"]
    # In the browser: the page itself was the one thing it asked for.
    assert chromium.page_requests(shop_page["net_log"], url) == [url]
    # In the text: no URL at all but the server's address, no attribute that loads anything.
    hosts = {server["host"] for server in shop_page["doc"]["servers"].values()}
    for html in (shop_page["served"], shop_page["dom"]):
        for found in re.findall(r"https?://[\w.\-]+(?::\d+)?", html, re.I):
            assert urlsplit(found).netloc in hosts, found
        assert "url(" not in html
        assert "@import" not in html
    for tag, attrs in shop_page["elements"].elements:
        assert tag not in ("img", "link", "iframe", "object", "embed", "audio", "video")
        assert "src" not in attrs, (tag, attrs)
        href = attrs.get("href")
        assert href is None or href.startswith("#"), (tag, attrs)


class Trap:
    """An HTTP server on loopback that counts the requests it gets: a page must send none."""

    def __init__(self) -> None:
        hits: list[str] = []
        self.hits = hits

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hits.append(self.path)
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def trap() -> Iterator[Trap]:
    server = Trap()
    yield server
    server.close()


def test_the_detectors_see_a_page_that_does_request(tmp_path: Path, trap: Trap) -> None:
    # The control: a page that loads an image from the trap is caught by both the trap
    # and the net log, so their silence about the AsyncAPI page means something.
    bait = tmp_path / "bait.html"
    bait.write_text(f'<!doctype html><p>bait</p><img src="{trap.url}/bait.png">')
    net_log = tmp_path / "net-log.json"
    chromium.dump_dom(bait.as_uri(), tmp_path / "profile", net_log=net_log)
    assert trap.hits == ["/bait.png"]
    assert f"{trap.url}/bait.png" in chromium.page_requests(net_log, bait.as_uri())


def test_text_from_the_service_stays_text(
    cli: Cli, background: list[Background], tmp_path: Path, trap: Trap
) -> None:
    # Docstrings and names are the service author's, but a page that turned them into
    # markup would load what they name and run what they hold.
    image = f'<img src="{trap.url}/docstring.png">'
    script = "</script><script>document.title = 'pwned'</script>"
    (tmp_path / "hostile.py").write_text(
        textwrap.dedent(
            f'''
            import microbroker

            service = microbroker.Service({script!r})

            @service.subscriber("topic</td><img src={trap.url}/topic.png>")
            async def handler(body: dict) -> None:
                """Look: {image} and {script}"""
            '''
        )
    )
    url = serve(cli, background, "hostile:service", tmp_path)
    net_log = tmp_path / "net-log.json"
    dom = chromium.dump_dom(url, tmp_path / "profile", net_log=net_log)
    elements = Elements(dom)
    assert trap.hits == []
    assert chromium.page_requests(net_log, url) == [url]
    assert not [tag for tag, _ in elements.elements if tag == "img"]
    title = re.search(r"<title>(.*?)</title>", dom, re.S)
    assert title is not None
    # The script in the name did not run (it would have made the title "pwned").
    assert title.group(1).startswith("&lt;/script&gt;&lt;script&gt;document.title"), title
    # Shown as the text it is.
    assert "Look: &lt;img src=" in dom
    channels = [attrs["data-channel"] for attrs in elements.having("data-channel")]
    assert channels == [f"topic</td><img src={trap.url}/topic.png>"]
