"""``microbroker plugins``: what is installed, from which distribution, and what failed to load."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .._api import API_VERSION
from .._errors import IncompatiblePlugin
from .._plugins import _version, available, plugin_errors, registry
from ._common import OK, broker_name, table

_KINDS = ("broker", "codec", "registry", "client", "server")
_EVENT_HOOKS = ("on_publish", "on_deliver", "wrap_publish", "wrap_handler", "on_error")


def add_parser(commands: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = commands.add_parser(
        "plugins",
        help="list installed brokers, codecs, registries, clients and servers",
        description="List what the installed plugins provide: brokers, codecs, "
        "registries, clients and servers, the plugins that implement event hooks "
        "(tracing, metrics...), with the distribution and version of each, "
        "and every plugin that failed to load (one written for another plugin API "
        "says which distribution to upgrade). The selected broker is marked with *.",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def run(args: argparse.Namespace) -> int:
    selected = broker_name(args)
    rows: list[dict[str, Any]] = []
    for kind in _KINDS:
        for name, info in available(kind).items():  # type: ignore[arg-type]
            rows.append(
                {
                    "kind": kind,
                    "name": name,
                    "distribution": info.distribution,
                    "version": info.version,
                    "selected": kind == "broker" and name == selected,
                }
            )
    rows.extend(_hook_rows())
    errors: list[dict[str, Any]] = []
    for failed in plugin_errors():
        entry: dict[str, Any] = {"distribution": failed.distribution, "error": str(failed)}
        if isinstance(failed, IncompatiblePlugin):
            entry.update(requires=failed.requires, upgrade=failed.upgrade)
        errors.append(entry)
    core = _version("microbroker")
    out = sys.stdout
    if args.json:
        document = {"version": core, "api_version": API_VERSION, "plugins": rows, "errors": errors}
        json.dump(document, out, indent=2)
        out.write("\n")
        return OK
    table(
        ("KIND", "NAME", "DISTRIBUTION", "VERSION"),
        [
            (
                row["kind"],
                row["name"]
                + (" *" if row["selected"] else "")
                + (f" ({', '.join(row['hooks'])})" if row.get("hooks") else ""),
                row["distribution"],
                row["version"],
            )
            for row in rows
        ],
        out,
    )
    out.write(f"\nmicrobroker {core}, plugin API {API_VERSION}\n")
    if not any(row["selected"] for row in rows):
        out.write(f"\nThe selected broker {selected!r} is not installed.\n")
    if errors:
        out.write(f"\n{len(errors)} plugin(s) failed to load:\n")
        for error in errors:
            out.write(f"  {error['error']}\n")
    return OK


def _hook_rows() -> list[dict[str, Any]]:
    """One row per plugin implementing event hooks, naming the hooks it implements."""
    reg = registry()
    hooks: dict[str, list[str]] = {}
    plugins: dict[str, object] = {}
    for hook in _EVENT_HOOKS:
        for impl in getattr(reg.pm.hook, hook).get_hookimpls():
            hooks.setdefault(impl.plugin_name, []).append(hook)
            plugins[impl.plugin_name] = impl.plugin
    rows = []
    for name, implemented in sorted(hooks.items()):
        distribution, version = reg._dist_of.get(id(plugins[name]), (name, ""))
        rows.append(
            {
                "kind": "hooks",
                "name": name,
                "distribution": distribution,
                "version": version,
                "selected": False,
                "hooks": implemented,
            }
        )
    return rows
