"""The HTML page of an AsyncAPI document: one self-contained file, no request of its own."""

from __future__ import annotations

import base64
import hashlib
import html
import json
from functools import cache
from importlib import resources
from typing import Any

# Characters that would let a document's text end the <script> element that holds it,
# or that older JavaScript engines read as line ends.
_SCRIPT_ESCAPES = {
    ord("<"): "\\u003c",
    ord(">"): "\\u003e",
    ord("&"): "\\u0026",
    0x2028: "\\u2028",
    0x2029: "\\u2029",
}


@cache
def _asset(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def _digest(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def content_security_policy() -> str:
    """The page's Content-Security-Policy: its own script and style, and nothing else.

    ``default-src 'none'`` forbids every fetch (scripts, styles, images, fonts,
    connections, frames); the page's inline script and style are allowed by
    their hashes. So the browser itself guarantees the page makes no request.
    """
    return (
        "default-src 'none'; "
        f"script-src {_digest(_asset('page.js'))}; "
        f"style-src {_digest(_asset('page.css'))}; "
        "img-src data:; base-uri 'none'; form-action 'none'"
    )


def page(document: dict[str, Any]) -> str:
    """An HTML page that shows ``document``: the service, its servers, channels,
    operations and payload schemas. It works offline: the renderer is inline,
    and its Content-Security-Policy lets it load nothing."""
    data = json.dumps(document, ensure_ascii=False, separators=(",", ":"))
    info = document.get("info") or {}
    title = f"{info.get('title', 'service')} - AsyncAPI"
    values = {
        "csp": html.escape(content_security_policy(), quote=True),
        "title": html.escape(title),
        "style": _asset("page.css"),
        "script": _asset("page.js"),
        "document": data.translate(_SCRIPT_ESCAPES),
        "escaped": html.escape(json.dumps(document, ensure_ascii=False, indent=2)),
    }
    out = _asset("page.html")
    # One pass, so that a value holding "{{...}}" is never expanded again.
    pieces = out.split("{{")
    result = [pieces[0]]
    for piece in pieces[1:]:
        name, sep, rest = piece.partition("}}")
        if sep and name in values:
            result.append(values[name] + rest)
        else:
            result.append("{{" + piece)
    return "".join(result)
