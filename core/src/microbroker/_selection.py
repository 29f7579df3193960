"""Selecting a broker, client, server or registry by name, as the environment says."""

from __future__ import annotations

import inspect
import os
from typing import Any

from ._broker import Broker
from ._errors import PluginError
from ._plugins import Kind, PluginInfo, registry

DEFAULT_BROKER = "http"
"""The broker used when neither a name nor ``MICRO_BROKER`` is given (go-micro's default)."""


def get_broker(name: str | None = None, **options: Any) -> Broker:
    """Create the broker registered as ``name``.

    With no ``name``, ``MICRO_BROKER`` selects it (default ``http``). The
    address comes from the ``address`` option or, when the broker is the one
    ``MICRO_BROKER`` selects, from ``MICRO_BROKER_ADDRESS``. Raises
    :class:`BrokerNotFound` for a name no installed plugin provides.
    """
    env_name = os.environ.get("MICRO_BROKER") or None
    chosen = name or env_name or DEFAULT_BROKER
    if options.get("address") is None and chosen == (env_name or DEFAULT_BROKER):
        env_address = os.environ.get("MICRO_BROKER_ADDRESS")
        if env_address:
            options["address"] = env_address
    elif options.get("address") is None:
        options.pop("address", None)
    info = registry().lookup("broker", chosen)
    broker = _create(info, options)
    if not isinstance(broker, Broker):
        raise PluginError(
            info.distribution,
            f"broker factory {chosen!r} returned {type(broker).__name__}, not a microbroker.Broker",
        )
    broker.name = chosen
    return broker


def create(kind: Kind, name: str, **options: Any) -> Any:
    """Create the client, server or registry registered as ``name``."""
    return _create(registry().lookup(kind, name), options)


def _create(info: PluginInfo, options: dict[str, Any]) -> Any:
    try:
        return info.target(**options)
    except TypeError as exc:
        try:
            params = inspect.signature(info.target).parameters
        except (TypeError, ValueError):
            raise exc from None
        takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
        unknown = [key for key in options if key not in params]
        if unknown and not takes_any:
            accepted = [n for n, p in params.items() if p.kind is not p.VAR_POSITIONAL]
            raise TypeError(
                f"{info.kind} {info.name!r} (from {info.distribution}) does not take "
                f"option(s) {', '.join(unknown)}; it takes: {', '.join(accepted)}"
            ) from exc
        raise
