"""A griffe extension: the reST of the docstrings, read as the Markdown mkdocstrings renders.

The docstrings are written for ``help()`` and editors, in reST's inline style:
``:class:`~microbroker.Broker``` roles, ````literal```` text and ``name::``
before a literal block. Markdown renders the double backticks and the indented
blocks as code already; this turns each role into the code span of its name
(the last part, for ``~``) and ``::`` into ``:``, so that the site shows
``Broker`` where ``help()`` shows the role.
"""

from __future__ import annotations

import re
from typing import Any

from griffe import Extension, Object

# :class:`Name`, :meth:`~a.b.c`, :func:`title <target>`, :py:class:`x`
ROLE = re.compile(r":(?:py:)?(?:class|meth|func|attr|mod|data|exc|obj|const|term):`([^`]+)`")
LITERAL_BLOCK = re.compile(r"(\S)::[ \t]*$", re.M)


def _role(match: re.Match[str]) -> str:
    target = match.group(1).strip()
    titled = re.match(r"^(.*?)\s*<([^>]+)>$", target)
    if titled:
        return f"`{titled.group(1)}`"
    if target.startswith("~"):
        target = target[1:].rsplit(".", 1)[-1]
    return f"`{target.lstrip('.')}`"


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _literal_blocks(text: str) -> str:
    """Each reST literal block (``name::``, a blank line, an indented block) as a fenced one.

    Fenced, because an indented block inside a list item would not be code in
    Markdown; at the indentation of the ``::`` line, so that it stays in its item.
    """
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not LITERAL_BLOCK.search(line):
            out.append(line)
            i += 1
            continue
        base = _indent(line)
        out.append(LITERAL_BLOCK.sub(r"\1:", line))
        j = i + 1
        while j < len(lines) and not lines[j].strip():
            j += 1
        block: list[str] = []
        while j < len(lines) and (not lines[j].strip() or _indent(lines[j]) > base):
            block.append(lines[j])
            j += 1
        while block and not block[-1].strip():
            block.pop()
        if not block:
            i += 1
            continue
        inner = min(_indent(b) for b in block if b.strip())
        pad = " " * base
        out += ["", f"{pad}```"]
        out += [pad + b[inner:] if b.strip() else "" for b in block]
        out += [f"{pad}```", ""]
        i = j
    return "\n".join(out)


def markdown(text: str) -> str:
    """``text`` with reST roles as code spans and literal blocks as fenced code."""
    return _literal_blocks(ROLE.sub(_role, text))


class RstToMarkdown(Extension):
    """Rewrites every docstring as it is loaded, before mkdocstrings parses it."""

    def on_instance(self, *, obj: Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown(obj.docstring.value)
