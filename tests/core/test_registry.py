"""The registry: built-ins through the hooks, selection by name and environment, plugin errors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

import microbroker
from microbroker import codecs
from microbroker._plugins import registry
from microbroker.brokers.memory import MemoryBroker


class RenamedMemory(MemoryBroker):
    """A broker a test plugin offers under a new name."""


def _broker_plugin(name: str, factory: Callable[..., Any] = RenamedMemory) -> object:
    class Plugin:
        @microbroker.hookimpl
        def register_brokers(self, register: Callable[[str, Any], None]) -> None:
            register(name, factory)

    return Plugin()


# Built-ins -----------------------------------------------------------------------------


def test_builtins_are_registered_through_the_hooks() -> None:
    """No special path for first-party code: the core is a plugin of its own registry."""
    reg = registry()
    core_plugin = reg.pm.get_plugin("microbroker")
    assert core_plugin is not None
    impls = {impl.plugin_name for impl in reg.pm.hook.register_brokers.get_hookimpls()}
    assert "microbroker" in impls

    memory = microbroker.available_brokers()["memory"]
    assert memory.distribution == "microbroker"
    assert memory.target is MemoryBroker
    codec_table = microbroker.available("codec")
    for content_type in (codecs.PROTOBUF, codecs.JSON, codecs.OCTET_STREAM, codecs.TEXT):
        assert codec_table[content_type].distribution == "microbroker"
    assert microbroker.available("client")["default"].target is microbroker.Client
    assert microbroker.available("server")["default"].target is microbroker.Server


def test_available_brokers_names_distribution_and_version() -> None:
    import importlib.metadata

    info = microbroker.available_brokers()["memory"]
    assert info.kind == "broker"
    assert info.name == "memory"
    assert info.version == importlib.metadata.version("microbroker")


# Selection -----------------------------------------------------------------------------


def test_get_broker_by_name_sets_name_and_address() -> None:
    broker = microbroker.get_broker("memory", address="reg-explicit")
    assert isinstance(broker, MemoryBroker)
    assert str(broker) == "memory"
    assert broker.address == "reg-explicit"


def test_get_broker_reads_micro_broker_and_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MICRO_BROKER", "memory")
    monkeypatch.setenv("MICRO_BROKER_ADDRESS", "from-env")
    broker = microbroker.get_broker()
    assert isinstance(broker, MemoryBroker)
    assert broker.address == "from-env"
    # An explicit address wins over the environment.
    assert microbroker.get_broker(address="given").address == "given"


def test_micro_broker_address_only_applies_to_the_env_selected_broker(
    monkeypatch: pytest.MonkeyPatch, plugin: Callable[..., str]
) -> None:
    plugin(_broker_plugin("renamed"), "renamed-plugin")
    monkeypatch.setenv("MICRO_BROKER", "memory")
    monkeypatch.setenv("MICRO_BROKER_ADDRESS", "memory-only")
    other = microbroker.get_broker("renamed")
    assert isinstance(other, RenamedMemory)
    assert other.address == MemoryBroker.default_address


def test_micro_broker_selects_a_plugin_broker(
    monkeypatch: pytest.MonkeyPatch, plugin: Callable[..., str]
) -> None:
    plugin(_broker_plugin("renamed"), "renamed-plugin")
    monkeypatch.setenv("MICRO_BROKER", "renamed")
    broker = microbroker.get_broker()
    assert isinstance(broker, RenamedMemory)
    assert str(broker) == "renamed"


def test_get_broker_passes_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MICRO_BROKER_ADDRESS", raising=False)
    broker = microbroker.get_broker("memory", max_pending=7, publish_timeout=0.5)
    assert isinstance(broker, MemoryBroker)
    assert broker.max_pending == 7
    assert broker.options["publish_timeout"] == 0.5


def test_unknown_broker_option_is_a_clear_type_error() -> None:
    with pytest.raises(TypeError) as info:
        microbroker.get_broker("memory", max_pendingg=3)
    message = str(info.value)
    assert "'memory'" in message
    assert "max_pendingg" in message
    assert "max_pending" in message.split("takes:")[1]


# Errors --------------------------------------------------------------------------------


def test_broker_not_found_lists_suggests_and_names_the_package() -> None:
    with pytest.raises(microbroker.BrokerNotFound) as info:
        microbroker.get_broker("memroy")
    error = info.value
    assert isinstance(error, LookupError)
    assert error.name == "memroy"
    assert "memory" in error.available
    assert error.suggestion == "memory"
    message = str(error)
    assert "memory" in message
    assert "Did you mean 'memory'?" in message
    # A typo of an installed broker is not sent to PyPI for a package that does not exist.
    assert "pip install" not in message
    assert error.install is None


@pytest.fixture
def zeromq_is_a_known_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    """A known plugin of the project that is certainly not installed."""
    from microbroker import _catalog

    monkeypatch.setattr(
        _catalog, "KNOWN_BROKERS", (_catalog.KnownPlugin("zeromq", "microbroker-zeromq"),)
    )


@pytest.mark.usefixtures("zeromq_is_a_known_plugin")
def test_a_typo_of_a_plugin_not_installed_names_its_package() -> None:
    with pytest.raises(microbroker.BrokerNotFound) as info:
        microbroker.get_broker("zeromqq")
    error = info.value
    assert error.suggestion == "zeromq"
    assert error.install == "microbroker-zeromq"
    assert "Did you mean 'zeromq'? Install it: pip install microbroker-zeromq" in str(error)


@pytest.mark.usefixtures("zeromq_is_a_known_plugin")
def test_a_plugin_not_installed_is_named_with_its_package() -> None:
    with pytest.raises(microbroker.BrokerNotFound) as info:
        microbroker.get_broker("zeromq")
    assert info.value.suggestion is None
    assert info.value.install == "microbroker-zeromq"
    assert "It is a plugin: pip install microbroker-zeromq" in str(info.value)


def test_a_name_close_to_nothing_gets_the_plugin_naming_rule() -> None:
    with pytest.raises(microbroker.BrokerNotFound) as info:
        microbroker.get_broker("xyzzy")
    assert info.value.suggestion is None
    assert "If 'xyzzy' is a plugin, install it: pip install microbroker-xyzzy" in str(info.value)


def test_broker_not_found_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MICRO_BROKER", "zeromq")
    with pytest.raises(microbroker.BrokerNotFound, match="pip install microbroker-zeromq"):
        microbroker.get_broker()


def test_unknown_codec_is_plugin_not_found() -> None:
    with pytest.raises(microbroker.PluginNotFound) as info:
        codecs.get_codec("application/xml")
    assert not isinstance(info.value, microbroker.BrokerNotFound)
    assert "application/json" in str(info.value)


# Plugins registered by hand -------------------------------------------------------------


def test_register_and_unregister_plugin() -> None:
    name = microbroker.register_plugin(_broker_plugin("handmade"), "handmade-plugin")
    try:
        assert name == "handmade-plugin"
        assert microbroker.available_brokers()["handmade"].distribution == "handmade-plugin"
        assert isinstance(microbroker.get_broker("handmade"), RenamedMemory)
    finally:
        microbroker.unregister_plugin(name)
    assert "handmade" not in microbroker.available_brokers()
    with pytest.raises(microbroker.BrokerNotFound):
        microbroker.get_broker("handmade")


def test_taken_name_is_a_plugin_error_and_the_first_keeps_it(
    plugin: Callable[..., str],
) -> None:
    class Impostor(MemoryBroker):
        pass

    plugin(_broker_plugin("memory", Impostor), "impostor-plugin")
    assert not isinstance(microbroker.get_broker("memory"), Impostor)
    assert microbroker.available_brokers()["memory"].distribution == "microbroker"
    errors = [e for e in microbroker.plugin_errors() if e.distribution == "impostor-plugin"]
    assert errors, microbroker.plugin_errors()
    assert "'memory'" in str(errors[-1])
    assert "already provides" in str(errors[-1])


def test_misspelled_hook_is_refused_with_a_hint() -> None:
    class Typo:
        @microbroker.hookimpl
        def register_broker(self, register: Callable[[str, Any], None]) -> None:
            register("typo", RenamedMemory)

    with pytest.raises(microbroker.PluginError) as info:
        microbroker.register_plugin(Typo(), "typo-plugin")
    assert info.value.distribution == "typo-plugin"
    assert "'register_broker'" in str(info.value)
    assert "did you mean 'register_brokers'?" in str(info.value)
    assert "typo" not in microbroker.available_brokers()
    # Refused means not registered: the name is free again.
    assert registry().pm.get_plugin("typo-plugin") is None


def test_raising_register_hook_is_isolated(plugin: Callable[..., str]) -> None:
    class Exploding:
        @microbroker.hookimpl
        def register_brokers(self, register: Callable[[str, Any], None]) -> None:
            raise RuntimeError("boom in register_brokers")

    plugin(Exploding(), "exploding-plugin")
    plugin(_broker_plugin("survivor"), "survivor-plugin")
    brokers = microbroker.available_brokers()
    assert "memory" in brokers
    assert "survivor" in brokers
    errors = [e for e in microbroker.plugin_errors() if e.distribution == "exploding-plugin"]
    assert errors
    assert "boom in register_brokers" in str(errors[-1])


def test_plugin_errors_are_not_repeated_on_each_rebuild(plugin: Callable[..., str]) -> None:
    """Tables are rebuilt whenever a plugin comes or goes; an error is reported once."""
    plugin(_broker_plugin("memory"), "twice-plugin")
    microbroker.available_brokers()
    plugin(_broker_plugin("another"), "another-plugin")
    microbroker.available_brokers()
    errors = [e for e in microbroker.plugin_errors() if e.distribution == "twice-plugin"]
    assert len(errors) == 1


def test_factory_returning_a_non_broker_is_a_plugin_error(plugin: Callable[..., str]) -> None:
    plugin(_broker_plugin("notabroker", lambda **options: object()), "bad-factory")
    with pytest.raises(microbroker.PluginError, match=r"not a microbroker\.Broker") as info:
        microbroker.get_broker("notabroker")
    assert info.value.distribution == "bad-factory"


def test_registering_the_same_name_twice_is_a_plugin_error(plugin: Callable[..., str]) -> None:
    plugin(_broker_plugin("dup"), "dup-plugin")
    with pytest.raises(microbroker.PluginError, match="dup-plugin"):
        microbroker.register_plugin(_broker_plugin("dup2"), "dup-plugin")
    assert "dup" in microbroker.available_brokers()


# Entry points of distributions on sys.path (a fresh Registry, so the process's is untouched) --


def _distribution(
    root: Any, dist: str, entry_points: dict[str, str], modules: dict[str, str]
) -> None:
    """Lay out an installed distribution: a .dist-info with entry points, and its modules."""
    info = root / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[microbroker]\n{lines}")
    for module, source in modules.items():
        (root / f"{module}.py").write_text(source)


_TYPO = """
import microbroker
from microbroker.brokers.memory import MemoryBroker

@microbroker.hookimpl
def register_broker(register):
    register("typo", MemoryBroker)
"""

_THIEF = """
import microbroker
from microbroker.brokers.memory import MemoryBroker

class Thief(MemoryBroker):
    pass

@microbroker.hookimpl
def register_brokers(register):
    register("memory", Thief)
    register("thief", Thief)
"""


def test_entry_point_plugins_with_a_typo_or_a_taken_name(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from microbroker import _builtins
    from microbroker._plugins import PluginRegistry

    suffix = tmp_path.name.replace("-", "_")
    typo_module, thief_module = f"typo_{suffix}", f"thief_{suffix}"
    _distribution(tmp_path, "microbroker-typoplugin", {"typo": typo_module}, {typo_module: _TYPO})
    _distribution(
        tmp_path, "microbroker-thiefplugin", {"thief": thief_module}, {thief_module: _THIEF}
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = PluginRegistry(builtins=_builtins)

    typo_errors = [e for e in reg.errors if e.distribution == "microbroker-typoplugin"]
    assert len(typo_errors) == 1
    assert "did you mean 'register_brokers'?" in str(typo_errors[0])
    with pytest.raises(microbroker.PluginError, match="microbroker-typoplugin"):
        reg.lookup("broker", "typo")

    brokers = reg.table("broker")
    assert brokers["memory"].distribution == "microbroker"  # the first owner keeps it
    assert brokers["thief"].distribution == "microbroker-thiefplugin"  # the rest is kept
    thief_errors = [e for e in reg.errors if e.distribution == "microbroker-thiefplugin"]
    assert len(thief_errors) == 1
    assert "'memory'" in str(thief_errors[0])
