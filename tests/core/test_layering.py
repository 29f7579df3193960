"""The shape of the code: no import circles in the core, and plugins on public names only.

Read from the source (every import that runs, the lazy ones inside functions
included; those under ``if TYPE_CHECKING:`` only name types), so that a circle
or a private import fails here before it confuses a reader or breaks an
import order.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "core" / "src" / "microbroker"
PLUGIN_SOURCES = sorted(
    [*(ROOT / "plugins").glob("*/src"), ROOT / "examples" / "plugin-template" / "src"]
)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(CORE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of ``tree`` but those under ``if TYPE_CHECKING:`` (annotations only)."""
    nodes: list[ast.AST] = []
    todo = [tree]
    while todo:
        node = todo.pop()
        nodes.append(node)
        if (
            isinstance(node, ast.If)
            and isinstance(node.test, ast.Name)
            and node.test.id == "TYPE_CHECKING"
        ):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))
    return nodes


def _imports(path: Path) -> set[str]:
    """The ``microbroker`` modules ``path`` imports when it runs, lazy imports included."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("microbroker"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if not target.startswith("microbroker"):
                continue
            for alias in node.names:
                # ``from . import x`` imports the module x when there is one, else the package.
                candidate = f"{target}.{alias.name}"
                as_path = CORE.parent / Path(*candidate.split("."))
                if as_path.with_suffix(".py").exists() or (as_path / "__init__.py").exists():
                    found.add(candidate)
                    if node.module is None:
                        continue
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in CORE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        # A package's __init__ runs when any of its modules is imported: those edges
        # are the packages', not real dependencies of the importer.
        graph[name] = {m for m in _imports(path) if m in modules and m != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt.startswith(node + "."):
                continue  # a package importing its own modules (its __init__ re-exports)
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if state.get(nxt) is None:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if state.get(node) is None:
            found = visit(node)
            if found:
                return found
    return None


def test_the_core_has_no_import_circle() -> None:
    graph = _graph()
    # ``microbroker`` itself (the composition root) re-exports everything: every module is
    # below it, and reaching up to it is what a circle would be.
    upward = sorted(name for name, deps in graph.items() if "microbroker" in deps)
    assert not upward, f"modules that import the package root (the composition root): {upward}"
    cycle = _cycle({name: deps - {"microbroker"} for name, deps in graph.items()})
    assert cycle is None, "import circle in the core: " + " -> ".join(cycle or [])


def test_the_check_finds_a_circle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("source", PLUGIN_SOURCES, ids=lambda p: p.parent.name)
def test_plugins_use_only_public_names_of_the_core(source: Path) -> None:
    private = []
    for path in source.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            for name in names:
                parts = name.split(".")
                if parts[0] == "microbroker" and any(p.startswith("_") for p in parts[1:]):
                    private.append(f"{path.relative_to(ROOT)}:{node.lineno}: {name}")
    assert not private, "plugins import private core names:\n" + "\n".join(private)
