"""Headless Chromium for the tests: a page's DOM after its scripts ran, and what it requested.

Chromium is Debian's ``chromium`` package (tests/support/install-chromium.sh).
Besides the page, the browser itself calls home (updates, sign-in, time): its
requests are sent to a proxy on a closed loopback port and every host name
resolves to nothing, so nothing leaves this machine. The page's own requests
are read from Chromium's net log.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--disable-default-apps",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    # Containment, not politeness: the flags above do not stop every request Chromium
    # makes of its own accord. Port 9 (discard) on loopback: nothing listens, nothing leaves.
    "--proxy-server=http://127.0.0.1:9",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
)


def binary() -> str:
    """The Chromium binary: fails in CI when it is missing, skips locally."""
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    message = (
        "Chromium is not installed: run tests/support/install-chromium.sh "
        "(Debian's chromium package; tox -e cli runs it)"
    )
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def dump_dom(url: str, profile: Path, *, net_log: Path | None = None, timeout: float = 120) -> str:
    """The page's DOM once it has loaded and its scripts have run (``--dump-dom``)."""
    argv = [binary(), *FLAGS, f"--user-data-dir={profile}"]
    if net_log is not None:
        argv.append(f"--log-net-log={net_log}")
    argv += ["--dump-dom", url]
    proc = subprocess.run(
        argv, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False
    )
    dom = proc.stdout.decode("utf-8", "replace")
    if proc.returncode != 0 or "<html" not in dom.lower():
        raise AssertionError(
            f"chromium --dump-dom {url} exited {proc.returncode}\nstdout:\n{dom[:2000]}\n"
            f"stderr:\n{proc.stderr.decode('utf-8', 'replace')[-4000:]}"
        )
    return dom


def page_requests(net_log: Path, page_url: str) -> list[str]:
    """Every URL that the page at ``page_url`` (or a frame of it) asked for, itself included.

    A request belongs to the page when its network isolation key is the page's
    site or its initiator is the page's origin; the browser's own requests have
    neither (their initiator is "not an origin").
    """
    log: dict[str, Any] = json.loads(net_log.read_text())
    constants = log["constants"]
    start_job = constants["logEventTypes"]["URL_REQUEST_START_JOB"]
    parts = urlsplit(page_url)
    if parts.scheme == "file":
        site, origin = "file://", "null"
    else:
        site = f"{parts.scheme}://{parts.hostname}"
        origin = f"{parts.scheme}://{parts.netloc}"
    urls = []
    for event in log["events"]:
        params = event.get("params") or {}
        if event["type"] != start_job or "url" not in params:
            continue
        isolation = str(params.get("network_isolation_key", ""))
        initiator = str(params.get("initiator", ""))
        if isolation.split(" ")[0] == site or initiator == origin:
            urls.append(str(params["url"]))
    return urls
