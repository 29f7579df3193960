"""The plugin API version: a plugin for another one is refused whole, saying what to upgrade.

The plugins here are real distributions laid out on ``sys.path`` for one test
(a ``.dist-info`` with the entry point, and the plugin's package), as pip would
install them; each records in a file what of its code ran, so that a test can
tell that a refused plugin's hooks never ran.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import microbroker
from microbroker import _builtins, _plugins
from microbroker._api import ApiRange, check, declared_in_source
from microbroker._plugins import PluginRegistry
from microbroker.transport import API_VERSION

ROOT = Path(__file__).resolve().parents[2]
MAJOR = int(API_VERSION.split(".")[0])
NEXT = f">={MAJOR + 1}.0,<{MAJOR + 2}"  # what a plugin for the next major declares
PREVIOUS = f">={MAJOR - 1}.0,<{MAJOR}"  # ... and one written for the major before this one
CURRENT = f">={MAJOR}.0,<{MAJOR + 1}"

CORE_VERSION = microbroker.available_brokers()["memory"].version


def _install(
    site: Path, dist: str, version: str, package: str, *, init: str = "", plugin: str
) -> Path:
    """Lay out ``dist`` (entry point ``<package>.plugin``) in ``site``; return its trace file.

    ``init`` and ``plugin`` are the sources of the package's ``__init__`` and of
    its ``plugin`` module; ``TRACE`` in them is the trace file's path, to which
    they append what ran.
    """
    site.mkdir(exist_ok=True)
    trace = site / f"{package}.trace"
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[microbroker]\n{package} = {package}.plugin\n")
    source = site / package
    source.mkdir()
    (source / "__init__.py").write_text(init.replace("TRACE", repr(str(trace))))
    (source / "plugin.py").write_text(plugin.replace("TRACE", repr(str(trace))))
    return trace


def _ran(trace: Path) -> list[str]:
    return trace.read_text().split() if trace.exists() else []


_PLUGIN = """
import microbroker
from microbroker.brokers.memory import MemoryBroker

open(TRACE, "a").write("plugin-imported\\n")
MICROBROKER_API = {declared}

@microbroker.hookimpl
def register_brokers(register):
    open(TRACE, "a").write("register_brokers\\n")
    register({name!r}, MemoryBroker)

@microbroker.hookimpl
def on_publish(broker, topic, message):
    open(TRACE, "a").write("on_publish\\n")
"""

# The package of a plugin for another API fails at import, as a real one would:
# it imports a toolkit name this core does not have.
_INIT_OF_ANOTHER_API = """
open(TRACE, "a").write("package-imported\\n")
from microbroker.transport import NameOfAnotherApi
"""


def _plugin(name: str, declared: str) -> str:
    return _PLUGIN.format(declared=declared, name=name)


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory on ``sys.path`` that plugins are installed into, as site-packages is."""
    path = tmp_path / "site"
    path.mkdir()
    monkeypatch.syspath_prepend(str(path))
    return path


@pytest.fixture
def unique(tmp_path: Path) -> Callable[[str], str]:
    """A package name of this test's own (modules stay in ``sys.modules`` between tests)."""
    suffix = tmp_path.name.replace("-", "_").lower()
    return lambda name: f"{name}_{suffix}"


# Refused before any of the plugin's code runs --------------------------------------------


def test_a_plugin_for_a_newer_api_is_refused_before_it_is_imported(
    site: Path, unique: Callable[[str], str]
) -> None:
    package = unique("future")
    trace = _install(
        site,
        "microbroker-future",
        "3.0.0",
        package,
        init=_INIT_OF_ANOTHER_API,
        plugin=_plugin(package, repr(NEXT)),
    )
    reg = PluginRegistry(builtins=_builtins)

    errors = [e for e in reg.errors if e.distribution == "microbroker-future"]
    assert len(errors) == 1, reg.errors
    error = errors[0]
    assert isinstance(error, microbroker.IncompatiblePlugin)
    assert isinstance(error, microbroker.PluginError)
    assert (error.version, error.requires, error.api_version) == ("3.0.0", NEXT, API_VERSION)
    assert error.upgrade == "microbroker"
    message = str(error)
    assert f"microbroker-future 3.0.0 is written for plugin API {NEXT}" in message
    assert f"microbroker {CORE_VERSION} has plugin API {API_VERSION}" in message
    assert "upgrade microbroker to a release whose plugin API is" in message
    assert "pip install -U microbroker" in message
    assert "it was not loaded" in message
    assert "ImportError" not in message  # the versions are the news, not the import failure

    # Nothing of it ran: not its package, not its plugin module, not a hook.
    assert _ran(trace) == []
    assert package not in sys.modules
    assert reg.pm.get_plugin(package) is None
    assert package not in reg.table("broker")
    assert reg.event_hooks().publishes is False
    # Selecting what it offers names it, with the same reason.
    with pytest.raises(microbroker.PluginError) as info:
        reg.lookup("broker", package)
    assert info.value.distribution == "microbroker-future"
    assert "could not be loaded" in str(info.value)
    assert f"plugin API {NEXT}" in str(info.value)


def test_a_plugin_for_an_older_api_names_itself_as_what_to_upgrade(
    site: Path, unique: Callable[[str], str]
) -> None:
    package = unique("old")
    trace = _install(
        site,
        "microbroker-old",
        "0.0.9",
        package,
        init=_INIT_OF_ANOTHER_API,
        plugin=_plugin(package, repr(PREVIOUS)),
    )
    reg = PluginRegistry(builtins=_builtins)

    [error] = [e for e in reg.errors if e.distribution == "microbroker-old"]
    assert isinstance(error, microbroker.IncompatiblePlugin)
    assert error.upgrade == "microbroker-old"
    message = str(error)
    assert f"microbroker-old 0.0.9 is written for plugin API {PREVIOUS}" in message
    assert f"has plugin API {API_VERSION}" in message
    assert f"upgrade microbroker-old to a release written for plugin API {API_VERSION}" in message
    assert "pip install -U microbroker-old" in message
    assert _ran(trace) == []


# Refused after import, before its hooks are registered -----------------------------------


def test_a_computed_declaration_is_checked_before_the_hooks_are_registered(
    site: Path, unique: Callable[[str], str]
) -> None:
    """Not a string literal: the source cannot tell, so the imported module is asked."""
    package = unique("computed")
    low, high = MAJOR + 1, MAJOR + 2
    trace = _install(
        site,
        "microbroker-computed",
        "2.0.0",
        package,
        plugin=_plugin(package, f'">={low}.0" + ",<{high}"'),
    )
    reg = PluginRegistry(builtins=_builtins)

    [error] = [e for e in reg.errors if e.distribution == "microbroker-computed"]
    assert isinstance(error, microbroker.IncompatiblePlugin)
    assert error.requires == f">={low}.0,<{high}"
    assert error.upgrade == "microbroker"
    # Its module was imported (that is how the value was read), and no hook of it ran or
    # was registered.
    assert _ran(trace) == ["plugin-imported"]
    assert reg.pm.get_plugin(package) is None
    assert package not in reg.table("broker")
    assert reg.event_hooks().publishes is False
    assert _ran(trace) == ["plugin-imported"]


def test_a_declaration_that_is_no_range_is_refused(
    site: Path, unique: Callable[[str], str]
) -> None:
    package = unique("bare")
    trace = _install(
        site, "microbroker-bare", "1.0.0", package, plugin=_plugin(package, repr(API_VERSION))
    )
    reg = PluginRegistry(builtins=_builtins)

    [error] = [e for e in reg.errors if e.distribution == "microbroker-bare"]
    assert not isinstance(error, microbroker.IncompatiblePlugin)
    assert f"declares MICROBROKER_API = {API_VERSION!r}" in str(error)
    assert "not a range of plugin API versions such as '>=1.0,<2'" in str(error)
    assert _ran(trace) == []


# Loaded --------------------------------------------------------------------------------


def test_a_plugin_whose_range_holds_this_api_is_loaded(
    site: Path, unique: Callable[[str], str]
) -> None:
    package = unique("current")
    trace = _install(
        site, "microbroker-current", "1.0.0", package, plugin=_plugin(package, repr(CURRENT))
    )
    reg = PluginRegistry(builtins=_builtins)

    assert [e for e in reg.errors if e.distribution == "microbroker-current"] == []
    info = reg.table("broker")[package]
    assert (info.distribution, info.version) == ("microbroker-current", "1.0.0")
    assert _ran(trace) == ["plugin-imported", "register_brokers"]


def test_plugin_errors_reports_it_in_the_process(
    site: Path, unique: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``microbroker.plugin_errors()`` itself, on a process registry made with the plugin."""
    package = unique("future")
    _install(site, "microbroker-future", "3.0.0", package, plugin=_plugin(package, repr(NEXT)))
    # A registry of this test's own; monkeypatch puts the process's back afterwards.
    monkeypatch.setattr(_plugins, "_registry", None)
    monkeypatch.setattr(_plugins, "hooks", None)

    [error] = [e for e in microbroker.plugin_errors() if e.distribution == "microbroker-future"]
    assert isinstance(error, microbroker.IncompatiblePlugin)
    assert package not in microbroker.available_brokers()
    assert "memory" in microbroker.available_brokers()


# Registered by hand ----------------------------------------------------------------------


def test_a_plugin_registered_by_hand_is_checked_too() -> None:
    ran: list[str] = []

    class Future:
        MICROBROKER_API = NEXT

        @microbroker.hookimpl
        def register_brokers(self, register: Callable[[str, Any], None]) -> None:
            ran.append("register_brokers")

    with pytest.raises(microbroker.IncompatiblePlugin) as info:
        microbroker.register_plugin(Future(), "future-by-hand")
    assert info.value.distribution == "future-by-hand"
    assert info.value.upgrade == "microbroker"
    assert _plugins.registry().pm.get_plugin("future-by-hand") is None
    microbroker.available_brokers()
    assert ran == []


# The command line --------------------------------------------------------------------------


def test_microbroker_plugins_reports_both_versions_and_what_to_upgrade(
    site: Path, unique: Callable[[str], str]
) -> None:
    package = unique("future")
    trace = _install(
        site,
        "microbroker-future",
        "3.0.0",
        package,
        init=_INIT_OF_ANOTHER_API,
        plugin=_plugin(package, repr(NEXT)),
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICRO_")}
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")])

    def plugins(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "microbroker.cli", "plugins", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    out = plugins()
    assert f"microbroker {CORE_VERSION}, plugin API {API_VERSION}" in out
    assert "plugin(s) failed to load:" in out  # (and the broken fake plugin, in tox's env)
    assert f"microbroker-future 3.0.0 is written for plugin API {NEXT}" in out
    assert f"microbroker {CORE_VERSION} has plugin API {API_VERSION}" in out
    assert "upgrade microbroker to a release whose plugin API is" in out
    assert package not in out.split("failed to load")[0]  # it provides nothing

    data = json.loads(plugins("--json"))
    assert (data["version"], data["api_version"]) == (CORE_VERSION, API_VERSION)
    [error] = [e for e in data["errors"] if e["distribution"] == "microbroker-future"]
    assert (error["requires"], error["upgrade"]) == (NEXT, "microbroker")
    assert _ran(trace) == []


# Install advice ------------------------------------------------------------------------------


def test_a_plugin_of_this_repository_not_installed_is_named_both_ways() -> None:
    """By name (from PyPI, once published) and by its folder (from a checkout)."""
    installed = microbroker.available_brokers()
    # A plugin whose folder is in this checkout, and that this environment lacks.
    name = next(
        n
        for n in ("nats", "mqtt", "kafka", "rabbitmq", "redis")
        if n not in installed and (ROOT / "plugins" / n / "pyproject.toml").exists()
    )
    with pytest.raises(microbroker.BrokerNotFound) as info:
        microbroker.get_broker(name)
    assert str(info.value).endswith(
        f"It is a plugin: pip install microbroker-{name} from PyPI, or from a checkout of "
        f"microbroker's repository: pip install ./plugins/{name}"
    )


# The declarations of this repository's plugins -----------------------------------------------


def _plugin_modules() -> list[tuple[Path, str]]:
    found = []
    template = ROOT / "examples" / "plugin-template" / "pyproject.toml"
    for pyproject in [*ROOT.glob("plugins/*/pyproject.toml"), template]:
        project = tomllib.loads(pyproject.read_text())["project"]
        for module in project["entry-points"]["microbroker"].values():
            found.append((pyproject.parent / "src", module))
    return sorted(found)


@pytest.mark.parametrize(
    ("src", "module"), _plugin_modules(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_every_plugin_here_declares_a_range_that_holds_this_api(
    src: Path, module: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As a literal, so that the core reads it before importing anything of the plugin."""
    monkeypatch.syspath_prepend(str(src))
    declared = declared_in_source(module)
    assert declared is not None, f"{module} declares no MICROBROKER_API string literal"
    assert check(declared) is None, f"{module} declares {declared!r}, outside {API_VERSION}"


# The ranges --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "inside", "outside"),
    [
        (">=1.0,<2", ["1.0", "1.7"], ["0.9", "2.0"]),
        (">=1.2, <2", ["1.2", "1.10"], ["1.1", "2.0"]),
        ("~=1.2", ["1.2", "1.9"], ["1.1", "2.0"]),
        ("==1.*", ["1.0", "1.9"], ["0.9", "2.0"]),
        ("==1.1", ["1.1"], ["1.0", "1.2"]),
        (">1.0,!=1.3,<=2.1", ["1.1", "2.1"], ["1.0", "1.3", "2.2"]),
    ],
)
def test_api_ranges(text: str, inside: list[str], outside: list[str]) -> None:
    api = ApiRange(text)
    assert [v for v in inside if v in api] == inside
    assert [v for v in outside if v in api] == []


@pytest.mark.parametrize(
    ("text", "api", "upgrade"),
    [(">=1.2,<2", "1.1", "core"), (">=1.0,<2", "2.0", "plugin"), ("~=1.2", "1.0", "core")],
)
def test_the_side_to_upgrade(text: str, api: str, upgrade: str) -> None:
    assert ApiRange(text).upgrade(api) == upgrade


@pytest.mark.parametrize("text", ["1.0", ">=1.0;<2", "~=1", ">=1.*", ">=one", ""])
def test_what_is_not_a_range(text: str) -> None:
    with pytest.raises(ValueError, match=r"plugin API|wildcard|~= needs"):
        ApiRange(text)
    mismatch = check(text)
    assert mismatch is not None
    assert mismatch.range is None
