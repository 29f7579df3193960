"""The plugin API version, and the check of the range a plugin declares.

A low layer of the core: the standard library only. The registry
(``_plugins``) asks it, for each plugin, before any of the plugin's hooks is
registered, whether the plugin was written for this core's API.

A plugin declares the range once, as a string in the module its entry point
names (``MICROBROKER_API = ">=1.0,<2"``). The registry reads it from the
module's source first, without importing anything of the plugin: a plugin
written for another API usually fails at import (a toolkit name it imports is
not there), and the user must then hear about the versions, not about an
``ImportError``. A declaration that is not a plain string literal is read from
the imported module instead, still before its hooks are registered.
"""

from __future__ import annotations

import ast
import importlib.machinery
import re
import sys
from dataclasses import dataclass
from typing import Literal

API_VERSION = "1.0"
"""The version of the plugin API: :mod:`microbroker.transport` and :mod:`microbroker.hookspecs`.

``MAJOR.MINOR``. The minor grows when the API gains a name (a plugin that
uses it declares ``>=1.MINOR``); the major grows when a name is removed or
changes meaning, and then every plugin's range must be looked at again.
"""

DECLARATION = "MICROBROKER_API"
"""The name under which a plugin declares the API versions it supports."""

_CLAUSE = re.compile(r"^\s*(~=|==|!=|<=|>=|<|>)\s*(\d+)(?:\.(\d+|\*))?\s*$")

Version = tuple[int, int]
Upgrade = Literal["core", "plugin"]


def _parse_version(text: str) -> Version:
    major, _, minor = text.partition(".")
    return int(major), int(minor or 0)


@dataclass(frozen=True, slots=True)
class _Clause:
    op: str
    version: Version
    major_only: bool  # ``==1.*`` / ``!=1.*``: any minor

    def admits(self, v: Version) -> bool:
        target = self.version
        if self.major_only:
            return (v[0] == target[0]) == (self.op == "==")
        if self.op == "~=":
            return v >= target and v[0] == target[0]
        return {
            "==": v == target,
            "!=": v != target,
            "<": v < target,
            "<=": v <= target,
            ">": v > target,
            ">=": v >= target,
        }[self.op]

    def too_old(self, v: Version) -> bool:
        """Whether ``v`` fails this clause by being below it (so the core is the older side)."""
        return self.op in (">", ">=", "~=", "==") and v < self.version


class ApiRange:
    """A range of plugin API versions: comma-separated clauses, as in ``>=1.0,<2``.

    Each clause is an operator (``>=``, ``>``, ``<=``, ``<``, ``==``, ``!=``,
    ``~=``) and a version ``MAJOR`` or ``MAJOR.MINOR`` (``==1.*`` for any minor
    of a major): the subset of PEP 440 version specifiers that makes sense for a
    two-part version.
    """

    __slots__ = ("_clauses", "text")

    def __init__(self, text: str) -> None:
        clauses = []
        for part in text.split(","):
            match = _CLAUSE.match(part)
            if match is None:
                raise ValueError(
                    f"{text!r} is not a range of plugin API versions such as '>=1.0,<2'"
                )
            op, major, minor = match.groups()
            if minor == "*" and op not in ("==", "!="):
                raise ValueError(f"{part.strip()!r}: a wildcard version needs == or !=")
            if op == "~=" and minor is None:
                raise ValueError(f"{part.strip()!r}: ~= needs MAJOR.MINOR, as in '~=1.0'")
            version = (int(major), 0 if minor in (None, "*") else int(minor))
            clauses.append(_Clause(op, version, minor == "*"))
        self.text = text
        self._clauses = tuple(clauses)

    def __contains__(self, version: str) -> bool:
        v = _parse_version(version)
        return all(clause.admits(v) for clause in self._clauses)

    def upgrade(self, version: str) -> Upgrade:
        """Which side is behind when ``version`` is not in the range: the core or the plugin."""
        v = _parse_version(version)
        failing = [clause for clause in self._clauses if not clause.admits(v)]
        return "core" if any(clause.too_old(v) for clause in failing) else "plugin"

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True, slots=True)
class Mismatch:
    """Why a plugin cannot be loaded by this core: what it declares, and who must upgrade."""

    declared: object
    """What the plugin declares as :data:`DECLARATION`."""
    range: ApiRange | None
    """The declared range; ``None`` when the declaration is not a valid range."""
    problem: str
    """The declaration's fault, when it is not a valid range."""
    upgrade: Upgrade | None
    """``"core"`` when microbroker is too old for the plugin, ``"plugin"`` when too new."""


def check(declared: object, api_version: str = API_VERSION) -> Mismatch | None:
    """``None`` when a plugin declaring ``declared`` works with ``api_version``; else why not."""
    if not isinstance(declared, str):
        return Mismatch(declared, None, f"{DECLARATION} must be a string such as '>=1.0,<2'", None)
    try:
        supported = ApiRange(declared)
    except ValueError as exc:
        return Mismatch(declared, None, str(exc), None)
    if api_version in supported:
        return None
    return Mismatch(declared, supported, "", supported.upgrade(api_version))


def declared_in_source(module: str) -> str | None:
    """The string literal ``module`` assigns to :data:`DECLARATION`, read without importing it.

    ``None`` when the module's source cannot be found without running code, or
    when it assigns no string literal at its top level (it may compute the
    value: the registry then reads the attribute once the module is imported).
    """
    try:
        spec = _find_spec(module)
        if spec is None or spec.loader is None or not spec.has_location:
            return None
        get_source = getattr(spec.loader, "get_source", None)
        source = get_source(module) if get_source is not None else None
        if not isinstance(source, str) or DECLARATION not in source:
            return None
        tree = ast.parse(source)
    except (ImportError, OSError, SyntaxError, ValueError):
        return None  # importing it will tell what is wrong, in the plugin's own words
    for node in tree.body:
        target: ast.expr | None = None
        value: ast.expr | None = None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign):
            target, value = node.target, node.value
        if isinstance(target, ast.Name) and target.id == DECLARATION:
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                return value.value
            return None
    return None


def _find_spec(module: str) -> importlib.machinery.ModuleSpec | None:
    """Find ``module`` as ``import`` would, but without importing (running) its packages.

    ``importlib.util.find_spec`` imports the parent packages of a dotted name,
    and a plugin's package ``__init__`` imports the rest of the plugin; the
    finders themselves only look at files.
    """
    parent, _, _ = module.rpartition(".")
    path: list[str] | None = None
    if parent:
        loaded = sys.modules.get(parent)
        if loaded is not None:
            path = list(getattr(loaded, "__path__", None) or [])
        else:
            parent_spec = _find_spec(parent)
            if parent_spec is None or parent_spec.submodule_search_locations is None:
                return None
            path = list(parent_spec.submodule_search_locations)
        if not path:
            return None
    for finder in sys.meta_path:
        find_spec = getattr(finder, "find_spec", None)
        if find_spec is None:
            continue
        spec = find_spec(module, path)
        if spec is not None:
            return spec  # type: ignore[no-any-return]
    return None
