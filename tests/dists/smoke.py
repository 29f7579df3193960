"""The smoke test ``tests/dists/check.py`` runs in a fresh venv holding only the built wheels.

Run as ``python -I smoke.py DISTS.json REPO`` from outside the repository: the
standard library only, and nothing of the source tree on ``sys.path``. It
checks what a user who ran ``pip install`` has:

- every distribution installed from its wheel, every module of every package
  importable (a dependency the wheel does not declare is not installed here,
  so importing the module that needs it fails), none of them read from REPO,
  and a ``py.typed`` next to each package;
- ``microbroker plugins --json``: every plugin's entry point provides something
  and none failed to load (a plugin declaring a plugin API this core is not
  in is one that failed), and each broker is made by ``get_broker``;
- the conformance suite on the core's ``memory`` and ``http`` brokers, as
  ``python -m microbroker.conformance`` runs it.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import pkgutil
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

problems: list[str] = []


def fail(message: str) -> None:
    print(f"FAIL: {message}", flush=True)
    problems.append(message)


def check_installed(dists: list[dict[str, Any]], repo: Path) -> None:
    prefix = Path(sys.prefix).resolve()
    # The source folders (the venv itself may be under the repository, in .tox).
    sources = [repo / "core", repo / "plugins", repo / "examples"]
    for dist in dists:
        before = len(problems)
        try:
            installed = importlib.metadata.distribution(dist["name"])
        except importlib.metadata.PackageNotFoundError:
            fail(f"{dist['name']} is not installed")
            continue
        if installed.version != dist["version"]:
            fail(f"{dist['name']} {installed.version} is installed, not {dist['version']}")
        direct = installed.read_text("direct_url.json")
        if direct and json.loads(direct).get("dir_info", {}).get("editable"):
            fail(f"{dist['name']} is an editable install, not its wheel")
        optional = extras_modules(installed)
        for package in dist["packages"]:
            modules = import_all(package, optional)
            for name, module in modules.items():
                where = Path(getattr(module, "__file__", "") or "").resolve()
                if not where.is_relative_to(prefix) or any(map(where.is_relative_to, sources)):
                    fail(f"{name} was imported from {where}, not from the venv's wheel")
            root = Path(modules[package].__file__ or "").parent if package in modules else None
            if root is not None and not (root / "py.typed").is_file():
                fail(f"{package} has no py.typed next to it in site-packages")
            version = getattr(modules.get(package), "__version__", None)
            if version is not None and version != installed.version:
                fail(f"{package}.__version__ is {version!r}, its distribution {installed.version}")
        if len(problems) == before:
            print(f"ok: {dist['name']} {installed.version}: {', '.join(dist['packages'])}")


def extras_modules(installed: importlib.metadata.Distribution) -> set[str]:
    """The top-level module names of the distribution's optional dependencies (its extras),
    taken as the requirement's name (``confluent-kafka`` -> ``confluent_kafka``)."""
    names = set()
    for line in installed.requires or []:
        requirement, _, marker = line.partition(";")
        if "extra ==" not in marker:
            continue
        name = re.split(r"[\s\[<>=!~(]", requirement.strip(), maxsplit=1)[0]
        names.add(name.lower().replace("-", "_").replace(".", "_"))
    return names


def import_all(package: str, optional: set[str] | frozenset[str] = frozenset()) -> dict[str, Any]:
    """Import ``package`` and every module under it (``__main__`` modules, which run, aside).

    A module that needs an optional dependency (an extra) not installed here may fail to
    import with ModuleNotFoundError naming that dependency: it is listed, not failed."""
    modules: dict[str, Any] = {}
    try:
        root = importlib.import_module(package)
    except Exception as exc:
        fail(f"import {package}: {exc!r}")
        return modules
    modules[package] = root

    def unwalkable(name: str) -> None:
        fail(f"import {name}: {sys.exc_info()[1]!r}")

    for info in pkgutil.walk_packages(root.__path__, prefix=f"{package}.", onerror=unwalkable):
        if info.name.rpartition(".")[2] == "__main__":
            continue
        try:
            modules[info.name] = importlib.import_module(info.name)
        except ModuleNotFoundError as exc:
            needed = (exc.name or "").partition(".")[0]
            if needed in optional:
                print(f"ok: {info.name} needs the optional {needed} (an extra), not installed")
                continue
            fail(f"import {info.name}: {exc!r}")
        except Exception as exc:
            fail(f"import {info.name}: {exc!r}")
    return modules


def check_plugins(dists: list[dict[str, Any]]) -> None:
    script = Path(sys.executable).with_name("microbroker")
    done = subprocess.run(
        [str(script), "plugins", "--json"], capture_output=True, text=True, timeout=120, check=False
    )
    if done.returncode != 0:
        fail(f"`microbroker plugins --json` exited {done.returncode}: {done.stderr}")
        return
    listing = json.loads(done.stdout)
    for error in listing["errors"]:
        fail(f"`microbroker plugins`: {error['error']}")
    providers = {row["distribution"] for row in listing["plugins"]}
    for dist in dists:
        if dist["entry_points"] and dist["name"] not in providers:
            fail(f"`microbroker plugins` lists nothing from {dist['name']}")
    print(
        f"microbroker plugins: {len(listing['plugins'])} rows from "
        f"{', '.join(sorted(providers))}; microbroker {listing['version']}, "
        f"plugin API {listing['api_version']}",
        flush=True,
    )

    import microbroker

    for name, info in microbroker.available_brokers().items():
        try:
            broker = microbroker.get_broker(name)
        except Exception as exc:
            fail(f"get_broker({name!r}) from {info.distribution}: {exc!r}")
            continue
        if str(broker) != name or broker.connected:
            fail(f"get_broker({name!r}) made {broker!r}, named {str(broker)!r}")
    print(f"get_broker made {', '.join(microbroker.available_brokers())}", flush=True)


def check_conformance() -> None:
    for broker in ("memory", "http"):
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "microbroker.conformance", "--broker", broker],
            timeout=1200,
            check=False,
        )
        if done.returncode != 0:
            fail(f"the conformance suite on {broker} exited {done.returncode} (above)")
        else:
            print(f"ok: conformance on {broker} in {time.monotonic() - started:.0f} s", flush=True)


def main() -> int:
    dists = json.loads(Path(sys.argv[1]).read_text())
    repo = Path(sys.argv[2]).resolve()
    check_installed(dists, repo)
    check_plugins(dists)
    check_conformance()
    if problems:
        print(f"\n{len(problems)} problem(s) in the installed wheels", flush=True)
        return 1
    print("\nthe installed wheels pass the smoke test", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
