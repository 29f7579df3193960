"""The plugin registry: pluggy over the ``microbroker`` entry-point group, and the error sink.

A low layer of the core: it knows the hook specifications and the tables of
what plugins registered, never the brokers themselves. The core's own
built-ins are handed to it by the composition root (``microbroker/__init__``,
through :func:`install_builtins`) and registered through the very same hooks
as any plugin. Selecting a broker by name (:func:`microbroker.get_broker`)
lives a layer up, in ``_selection``.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import pluggy

from . import _api, hookspecs
from ._catalog import install_hint, known_broker
from ._errors import BrokerNotFound, IncompatiblePlugin, PluginError, PluginNotFound
from ._headers import normalize_content_type
from ._markers import PROJECT

if TYPE_CHECKING:
    from collections.abc import Awaitable

    Handler = Callable[[Any], Awaitable[None]]

logger = logging.getLogger("microbroker")

ENTRY_POINT_GROUP = "microbroker"

Kind = Literal["broker", "codec", "client", "server", "registry"]
_KINDS: tuple[Kind, ...] = ("broker", "codec", "client", "server", "registry")


@dataclass(frozen=True, slots=True)
class PluginInfo:
    """One thing a plugin registered: a broker, codec, client, server or registry."""

    kind: str
    name: str
    """The name it is selected by (a content type, for a codec)."""
    distribution: str
    """The installed distribution that registered it."""
    version: str
    target: Any
    """The factory (or, for a codec, the codec)."""


class _Refused(Exception):
    """Raised by :class:`_PluginManager` for a plugin written for another plugin API."""

    def __init__(self, mismatch: _api.Mismatch) -> None:
        super().__init__(mismatch)
        self.mismatch = mismatch


class _PluginManager(pluggy.PluginManager):
    """pluggy's plugin manager, which refuses a plugin written for another plugin API.

    The check is in ``register`` so that it holds for plugins loaded through
    entry points (pluggy imports the module, then registers it) and by hand
    alike: a refused plugin's hooks are never registered, so none of them runs.
    """

    def register(self, plugin: object, name: str | None = None) -> str | None:
        declared = getattr(plugin, _api.DECLARATION, None)
        if declared is not None:
            mismatch = _api.check(declared)
            if mismatch is not None:
                raise _Refused(mismatch)
        return super().register(plugin, name)


class PluginRegistry:
    """The plugin manager and the tables of what plugins registered.

    There is one per process, made on first use by :func:`registry`; tables are
    built lazily and rebuilt when a plugin is registered or unregistered. (Not
    to be confused with the *service* registries of :mod:`microbroker.registries`,
    where the http broker's subscribers announce themselves.)
    """

    def __init__(self, *, builtins: object | None = None, load_entry_points: bool = True) -> None:
        self.pm: pluggy.PluginManager = _PluginManager(PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.errors: list[PluginError] = []
        self._failed_entry_points: dict[str, PluginError] = {}
        self._dist_of: dict[int, tuple[str, str]] = {}
        self._tables: dict[str, dict[str, PluginInfo]] | None = None
        self._hooks: EventHooks | None = None
        self._lock = threading.RLock()
        if builtins is not None:
            self.register(builtins, name=PROJECT, distribution=(PROJECT, _version(PROJECT)))
        if load_entry_points:
            self._load_entry_points()

    # Loading ---------------------------------------------------------------------

    def _load_entry_points(self) -> None:
        eps = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
        for ep in sorted(eps, key=lambda e: (_dist_name(e), e.name)):
            dist = _dist_name(ep)
            owner = self.pm.get_plugin(ep.name)
            if owner is not None:
                if self._dist_of.get(id(owner), ("",))[0] != dist:
                    self._record(
                        PluginError(
                            dist,
                            f"its entry point {ep.name!r} is already taken by "
                            f"{self._dist_of.get(id(owner), ('?',))[0]}; it was not loaded",
                        ),
                        entry_point=ep.name,
                    )
                continue
            version = ep.dist.version if ep.dist is not None else ""
            # A plugin for another plugin API is refused before any of its code runs,
            # when its declaration can be read from its source...
            declared = _api.declared_in_source(ep.module)
            mismatch = _api.check(declared) if declared is not None else None
            if mismatch is not None:
                self._record(_incompatible(mismatch, dist, version), entry_point=ep.name)
                continue
            try:
                # pluggy does the loading; one name at a time so that a broken
                # plugin cannot stop the others from loading.
                self.pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP, name=ep.name)
            except _Refused as refusal:
                # ... and otherwise once imported, before its hooks are registered.
                self._record(_incompatible(refusal.mismatch, dist, version), entry_point=ep.name)
                continue
            except Exception as exc:
                self._record(
                    PluginError(dist, f"failed to load entry point {ep.value!r}: {exc!r}"),
                    entry_point=ep.name,
                )
                continue
            for plugin, distinfo in self.pm.list_plugin_distinfo():
                if id(plugin) not in self._dist_of:
                    self._dist_of[id(plugin)] = (distinfo.project_name, distinfo.version)
            plugin = self.pm.get_plugin(ep.name)
            if plugin is not None:
                refused = self._validate(plugin, dist)
                if refused is not None:
                    # Selecting the entry point's name then names the distribution at fault.
                    self._failed_entry_points[ep.name] = refused

    def _validate(self, plugin: object, dist: str) -> PluginError | None:
        """Refuse a plugin that implements hooks microbroker does not define (a typo, usually)."""
        unknown = [
            caller.name for caller in self.pm.get_hookcallers(plugin) or [] if not caller.has_spec()
        ]
        if unknown:
            known = sorted(
                caller.name
                for caller in vars(self.pm.hook).values()
                if isinstance(caller, pluggy.HookCaller) and caller.has_spec()
            )
            hints = []
            for name in unknown:
                close = difflib.get_close_matches(name, known, n=1)
                hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            self.pm.unregister(plugin)
            self._dist_of.pop(id(plugin), None)
            error = PluginError(dist, f"implements unknown hook(s) {', '.join(hints)}")
            self._record(error)
            return error
        return None

    def _record(self, error: PluginError, *, entry_point: str | None = None) -> None:
        # Tables are rebuilt whenever a plugin comes or goes: report each problem once.
        if not any(str(known) == str(error) for known in self.errors):
            logger.warning("%s", error)
            self.errors.append(error)
        if entry_point is not None:
            self._failed_entry_points[entry_point] = error

    # Registration by hand ------------------------------------------------------------

    def register(
        self,
        plugin: object,
        name: str | None = None,
        *,
        distribution: tuple[str, str] | None = None,
    ) -> str:
        """Register ``plugin`` (a module or object with hook implementations)."""
        with self._lock:
            dist = distribution or (name or _plugin_label(plugin), "")
            try:
                registered = self.pm.register(plugin, name=name)
            except _Refused as refusal:
                error = _incompatible(refusal.mismatch, *dist)
                self._record(error)
                raise error from None
            except (ValueError, pluggy.PluginValidationError) as exc:
                raise PluginError(dist[0], str(exc)) from exc
            if registered is None:
                raise PluginError(dist[0], "is blocked from registering")
            self._dist_of[id(plugin)] = dist
            refused = self._validate(plugin, dist[0])
            if refused is not None:
                raise refused
            self._invalidate()
            return registered

    def unregister(self, plugin: object | str) -> None:
        with self._lock:
            obj = self.pm.get_plugin(plugin) if isinstance(plugin, str) else plugin
            if obj is not None:
                self.pm.unregister(obj)
                self._dist_of.pop(id(obj), None)
            self._invalidate()

    def _invalidate(self) -> None:
        global hooks
        self._tables = None
        self._hooks = None
        if _registry is self:
            hooks = None

    # Tables ----------------------------------------------------------------------

    def table(self, kind: Kind) -> dict[str, PluginInfo]:
        tables = self._tables
        if tables is None:
            with self._lock:
                tables = self._tables = self._build_tables()
        return tables[kind]

    def _build_tables(self) -> dict[str, dict[str, PluginInfo]]:
        tables: dict[str, dict[str, PluginInfo]] = {kind: {} for kind in _KINDS}
        hooks = {
            "broker": self.pm.hook.register_brokers,
            "codec": self.pm.hook.register_codecs,
            "client": self.pm.hook.register_clients,
            "server": self.pm.hook.register_servers,
            "registry": self.pm.hook.register_registries,
        }
        for kind, caller in hooks.items():
            # get_hookimpls() lists in registration order (pluggy *calls* them in reverse):
            # the built-ins and earlier plugins go first, so a name stays with its first owner.
            for impl in caller.get_hookimpls():
                dist, version = self._dist_of.get(id(impl.plugin), (impl.plugin_name, ""))
                register = _Registrar(tables[kind], kind, dist, version, self)
                try:
                    impl.function(register)
                except Exception as exc:
                    self._record(PluginError(dist, f"its register_{kind}s hook raised {exc!r}"))
        return tables

    # Event hooks -------------------------------------------------------------------

    def event_hooks(self) -> EventHooks:
        """What the installed plugins do on each publish and delivery, looked up once."""
        made = self._hooks
        if made is None:
            with self._lock:
                made = self._hooks = EventHooks(self.pm.hook)
        return made

    # Lookup -------------------------------------------------------------------------

    def lookup(self, kind: Kind, name: str) -> PluginInfo:
        table = self.table(kind)
        info = table.get(name)
        if info is not None:
            return info
        failed = self._failed_entry_points.get(name)
        if failed is not None:
            reason = str(failed).removeprefix(f"plugin {failed.distribution}: ")
            raise PluginError(
                failed.distribution,
                f"provides {kind} {name!r} but could not be loaded ({reason}); "
                f"fix or reinstall {failed.distribution}, or uninstall it",
            ) from failed
        names = sorted(table)
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
        if close or kind != "broker":
            error_type = BrokerNotFound if kind == "broker" else PluginNotFound
            raise error_type(name, names, suggestion=close[0] if close else None, kind=kind)
        # Not close to anything installed: perhaps to a published plugin that is not installed.
        known = known_broker(name, exclude=names)
        if known is not None:
            suggestion = None if known == name else known
            raise BrokerNotFound(name, names, suggestion=suggestion, install=install_hint(known))
        raise BrokerNotFound(name, names)


class _Registrar:
    """The ``register`` callable handed to one plugin's ``register_*`` hook."""

    __slots__ = ("dist", "kind", "owner", "table", "version")

    def __init__(
        self,
        table: dict[str, PluginInfo],
        kind: str,
        dist: str,
        version: str,
        owner: PluginRegistry,
    ) -> None:
        self.table, self.kind, self.dist, self.version, self.owner = (
            table,
            kind,
            dist,
            version,
            owner,
        )

    def __call__(self, name: str, target: Any) -> None:
        if self.kind == "codec" and isinstance(name, str):
            name = normalize_content_type(name)
        if not isinstance(name, str) or not name:
            self.owner._record(
                PluginError(self.dist, f"registered a {self.kind} with an invalid name {name!r}")
            )
            return
        if self.kind != "codec" and not callable(target):
            self.owner._record(
                PluginError(
                    self.dist, f"registered {self.kind} {name!r} with a non-callable factory"
                )
            )
            return
        taken = self.table.get(name)
        if taken is not None:
            self.owner._record(
                PluginError(
                    self.dist,
                    f"registers {self.kind} {name!r}, which {taken.distribution} already "
                    f"provides; {taken.distribution}'s stays in use",
                )
            )
            return
        self.table[name] = PluginInfo(self.kind, name, self.dist, self.version, target)


def _incompatible(mismatch: _api.Mismatch, dist: str, version: str) -> PluginError:
    """The error of a plugin whose declared plugin API range this core is not in."""
    if mismatch.range is None:
        return PluginError(
            dist,
            f"declares {_api.DECLARATION} = {mismatch.declared!r}: {mismatch.problem}; "
            "it was not loaded",
        )
    return IncompatiblePlugin(
        dist,
        version=version,
        requires=str(mismatch.range),
        api_version=_api.API_VERSION,
        core_version=_version(PROJECT),
        upgrade=PROJECT if mismatch.upgrade == "core" else dist,
    )


def _direct_call(caller: pluggy.HookCaller, argnames: tuple[str, ...]) -> Callable[..., None]:
    """Call every implementation of ``caller`` with ``argnames`` given positionally.

    Made once per broker or subscription. pluggy's own call path costs more than
    a no-op observer, so on the hot path the implementations are called directly,
    in pluggy's order; hook wrappers, which only pluggy knows how to run, keep
    the pluggy path.
    """
    impls = caller.get_hookimpls()
    if any(impl.hookwrapper or impl.wrapper for impl in impls):

        def via_pluggy(*args: Any) -> None:
            caller(**dict(zip(argnames, args, strict=True)))

        return via_pluggy
    functions: list[Callable[..., Any]] = []
    for impl in reversed(impls):  # pluggy calls the last registered first
        if impl.argnames == argnames:
            functions.append(impl.function)
        else:  # an implementation may take a subset of the arguments, in any order
            positions = tuple(argnames.index(name) for name in impl.argnames)

            def subset(
                *args: Any, _fn: Any = impl.function, _at: tuple[int, ...] = positions
            ) -> Any:
                return _fn(*(args[i] for i in _at))

            functions.append(subset)
    if len(functions) == 1:
        return functions[0]

    def call_all(*args: Any) -> None:
        for function in functions:
            function(*args)

    return call_all


def _call_impl(impl: pluggy.HookImpl, **kwargs: Any) -> Any:
    """Call one hook implementation as pluggy would: with only the arguments it declares."""
    return impl.function(*(kwargs[name] for name in impl.argnames))


def _dist_name(ep: importlib.metadata.EntryPoint) -> str:
    dist = ep.dist
    return dist.name if dist is not None else ep.value.partition(":")[0]


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def _plugin_label(plugin: object) -> str:
    return getattr(plugin, "__name__", None) or type(plugin).__qualname__


_registry: PluginRegistry | None = None
_registry_lock = threading.Lock()
_builtins: object | None = None

hooks: EventHooks | None = None
"""The event hooks of the process-wide registry, or ``None`` until first asked for.

Read by ``Broker.publish`` on every publish: one module attribute, no call,
when it is set.
"""


def install_builtins(plugin: object) -> None:
    """Hand the core's own plugin (its brokers, codecs...) to the registry made on first use.

    Called once, by the composition root (``microbroker/__init__``).
    """
    global _builtins
    _builtins = plugin


def registry() -> PluginRegistry:
    """The process-wide plugin registry, loading the installed plugins on first use."""
    global _registry
    reg = _registry
    if reg is None:
        with _registry_lock:
            reg = _registry
            if reg is None:
                reg = _registry = PluginRegistry(builtins=_builtins)
    return reg


def event_hooks() -> EventHooks:
    """The event hooks of the installed plugins (see :class:`EventHooks`)."""
    global hooks
    current = hooks
    if current is None:
        current = hooks = registry().event_hooks()
    return current


class EventHooks:
    """The event hooks plugins implement, looked up once; rebuilt when plugins change.

    :attr:`publishes` and :attr:`delivers` say whether any plugin observes or
    wraps publishes and deliveries: with neither, ``Broker.publish`` and
    ``Broker.subscribe`` run exactly as if the hooks did not exist.
    """

    __slots__ = ("_hook", "delivers", "publishes")

    def __init__(self, hook: Any) -> None:
        self._hook = hook
        self.publishes = bool(hook.on_publish.get_hookimpls() or hook.wrap_publish.get_hookimpls())
        self.delivers = bool(hook.on_deliver.get_hookimpls() or hook.wrap_handler.get_hookimpls())

    def publisher(self, broker: Any, send: Callable[..., Any]) -> Callable[..., Any]:
        """``send`` (``async (topic, message, **options)``) under every publish hook."""
        hook = self._hook
        publish = send
        for impl in reversed(hook.wrap_publish.get_hookimpls()):
            wrapped: Any = _call_impl(impl, broker=broker, publish=publish)
            if wrapped is not None:
                publish = wrapped
        if hook.on_publish.get_hookimpls():
            inner = publish
            on_publish = _direct_call(hook.on_publish, ("broker", "topic", "message"))

            async def observed_publish(topic: str, message: Any, **options: Any) -> None:
                on_publish(broker, topic, message)
                await inner(topic, message, **options)

            publish = observed_publish
        return publish

    def handler(self, broker: Any, topic: str, queue: str | None, handler: Handler) -> Handler:
        """``handler`` under every delivery hook (``on_deliver``, then ``wrap_handler``)."""
        hook = self._hook
        if hook.on_deliver.get_hookimpls():
            inner = handler
            on_deliver = _direct_call(hook.on_deliver, ("broker", "delivery"))

            async def observed(delivery: Any) -> None:
                on_deliver(broker, delivery)
                await inner(delivery)

            handler = observed
        for impl in reversed(hook.wrap_handler.get_hookimpls()):
            wrapped: Any = _call_impl(
                impl, broker=broker, topic=topic, queue=queue, handler=handler
            )
            if wrapped is not None:
                handler = wrapped
        return handler


# The public functions ------------------------------------------------------------------


def available_brokers() -> dict[str, PluginInfo]:
    """Map each installed broker name to what provides it (distribution and version)."""
    return dict(sorted(registry().table("broker").items()))


def available(kind: Kind) -> dict[str, PluginInfo]:
    """Map each installed name of ``kind`` to its provider.

    ``kind`` is one of broker, codec, client, server, registry.
    """
    return dict(sorted(registry().table(kind).items()))


def plugin_errors() -> list[PluginError]:
    """The errors met while loading plugins: each names the distribution at fault."""
    reg = registry()
    reg.table("broker")  # build the tables so that registration errors are included
    return list(reg.errors)


def register_plugin(plugin: object, name: str | None = None) -> str:
    """Register a plugin by hand (a module or object with ``@hookimpl`` functions).

    Useful in tests and applications; installed distributions are found through
    entry points without this. Returns the name it was registered under.
    """
    return registry().register(plugin, name)


def unregister_plugin(plugin: object | str) -> None:
    """Remove a plugin registered by hand or through an entry point."""
    registry().unregister(plugin)


def report_error(error: BaseException, delivery: Any | None) -> None:
    """Hand ``error`` to the ``on_error`` hooks (and the ``microbroker`` logger).

    ``delivery`` is the :class:`~microbroker.Delivery` the error happened in,
    or ``None``. Transports call this for what they cannot hand to a caller:
    a message they had to drop, a connection they lost, a handler that failed.
    """
    topic = delivery.topic if delivery is not None else None
    logger.warning("error delivering a message on topic %r: %s", topic, error, exc_info=error)
    hook = registry().pm.hook.on_error
    if hook.get_hookimpls():
        try:
            hook(error=error, delivery=delivery)
        except Exception:
            logger.exception("an on_error hook raised")
