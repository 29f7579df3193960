"""Service registry records and the Registry interface (go-micro's ``registry.Registry``)."""

from __future__ import annotations

import abc
import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

from .._errors import MicrobrokerError

DEFAULT_TTL = 15.0
"""Seconds a registration lives unless it is renewed (go-micro uses one minute)."""


class RegistryError(MicrobrokerError):
    """The registry cannot be used: unreadable or unsafe directory, bad record, closed registry."""


@dataclass(slots=True)
class Node:
    """One instance of a service: where to reach it and what it offers."""

    id: str
    """Unique among the nodes of a service."""
    address: str
    """``host:port`` to reach the node at."""
    metadata: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The node as go-micro's JSON encoding of ``registry.Node``."""
        return {"id": self.id, "address": self.address, "metadata": dict(self.metadata)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Node:
        """Parse go-micro's JSON encoding of ``registry.Node``."""
        return cls(
            id=str(data["id"]),
            address=str(data["address"]),
            metadata={str(k): str(v) for k, v in (data.get("metadata") or {}).items()},
        )


@dataclass(slots=True)
class Service:
    """A named, versioned service and the nodes that run it (go-micro's ``registry.Service``).

    The http broker registers one service ``micro.http.broker`` per
    subscription: the version is the queue group (or ``ff.http.broadcast``)
    and the single node carries the topic in its metadata.
    """

    name: str
    version: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    nodes: list[Node] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The service as go-micro's JSON encoding of ``registry.Service``."""
        return {
            "name": self.name,
            "version": self.version,
            "metadata": dict(self.metadata),
            "endpoints": [],
            "nodes": [node.to_json() for node in self.nodes],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Service:
        """Parse go-micro's JSON encoding of ``registry.Service``."""
        return cls(
            name=str(data["name"]),
            version=str(data.get("version") or ""),
            metadata={str(k): str(v) for k, v in (data.get("metadata") or {}).items()},
            nodes=[Node.from_json(n) for n in data.get("nodes") or []],
        )


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """A change seen by :meth:`Registry.watch`: a node appeared, changed or went away."""

    action: Literal["create", "update", "delete"]
    service: Service
    """The service, with the one node that changed."""


class Registry(abc.ABC):
    """Where services register their nodes and where clients find them.

    Implementations are offered by plugins through the ``register_registries``
    hook and selected with ``MICRO_REGISTRY``. Registrations carry a TTL: a
    node that is not registered again before its TTL runs out disappears
    from lookups, so that a process that dies without deregistering drops out.
    """

    #: The name the registry is registered under.
    name: str = "registry"

    @abc.abstractmethod
    async def register(self, service: Service, *, ttl: float | None = None) -> None:
        """Add or renew every node of ``service``, each for ``ttl`` seconds (default TTL if None).

        Registering again before the TTL runs out is the heartbeat that keeps a node listed.
        """

    @abc.abstractmethod
    async def deregister(self, service: Service) -> None:
        """Remove every node of ``service``. Removing what is not registered is harmless."""

    @abc.abstractmethod
    async def get_service(self, name: str) -> list[Service]:
        """The live versions of service ``name``, each with its live nodes; ``[]`` when none."""

    @abc.abstractmethod
    async def list_services(self) -> list[Service]:
        """Every live service (one entry per name and version)."""

    async def watch(
        self, service: str | None = None, *, interval: float = 0.5
    ) -> AsyncIterator[WatchEvent]:
        """Yield a :class:`WatchEvent` for each node that appears, changes or goes away.

        The default implementation polls every ``interval`` seconds;
        registries with change notification override it.
        """
        known: dict[tuple[str, str, str], tuple[Service, Node]] = {}
        while True:
            services = (
                await self.get_service(service)
                if service is not None
                else await self.list_services()
            )
            seen: dict[tuple[str, str, str], tuple[Service, Node]] = {}
            for svc in services:
                for node in svc.nodes:
                    seen[(svc.name, svc.version, node.id)] = (svc, node)
            for key, (svc, node) in seen.items():
                old = known.get(key)
                if old is None or old[1] != node:
                    yield WatchEvent("create" if old is None else "update", _with_node(svc, node))
            for key, (svc, node) in known.items():
                if key not in seen:
                    yield WatchEvent("delete", _with_node(svc, node))
            known = seen
            await asyncio.sleep(interval)

    async def close(self) -> None:  # noqa: B027 - optional for implementations
        """Release what the registry holds. Registrations made are left to expire or deregister."""

    def __str__(self) -> str:
        return self.name


def _with_node(service: Service, node: Node) -> Service:
    return Service(service.name, service.version, dict(service.metadata), [node])
