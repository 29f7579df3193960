"""Service registries: where the http broker's subscribers announce themselves.

A registry maps a service name to versions and nodes (go-micro's
``registry.Registry``). Plugins offer more (etcd, Consul, mDNS...) through
the ``register_registries`` hook; ``MICRO_REGISTRY`` selects one by name and
``MICRO_REGISTRY_ADDRESS`` gives its address. Built-ins:

- ``local`` (the default): files in a private per-user directory; works
  between the processes of one machine with nothing to set up.
- ``memory``: in-process.
"""

from __future__ import annotations

import os
from typing import Any

from .._errors import PluginError
from .._plugins import registry
from ._base import DEFAULT_TTL, Node, Registry, RegistryError, Service, WatchEvent

DEFAULT_REGISTRY = "local"

__all__ = [
    "DEFAULT_REGISTRY",
    "DEFAULT_TTL",
    "Node",
    "Registry",
    "RegistryError",
    "Service",
    "WatchEvent",
    "get_registry",
]


def get_registry(name: str | None = None, **options: Any) -> Registry:
    """Create the registry registered as ``name``.

    With no ``name``, ``MICRO_REGISTRY`` selects it (default ``local``) and
    ``MICRO_REGISTRY_ADDRESS`` gives its address unless ``address`` is passed.
    Raises :class:`microbroker.PluginNotFound` for a name no plugin provides.
    """
    if name is None:
        name = os.environ.get("MICRO_REGISTRY") or DEFAULT_REGISTRY
        if options.get("address") is None:
            env_address = os.environ.get("MICRO_REGISTRY_ADDRESS")
            if env_address:
                options["address"] = env_address
    if options.get("address") is None:
        options.pop("address", None)
    info = registry().lookup("registry", name)
    created = info.target(**options)
    if not isinstance(created, Registry):
        raise PluginError(
            info.distribution,
            f"registry factory {name!r} returned {type(created).__name__}, "
            "not a microbroker.registries.Registry",
        )
    created.name = name
    return created
