"""The ``memory`` registry: in-process, for tests and single-process applications.

Every memory registry created with the same address in one process shares
one table, as memory brokers share one bus.
"""

from __future__ import annotations

import time

from ._base import DEFAULT_TTL, Node, Registry, Service

# (service name, version) -> node id -> (service metadata, node, monotonic expiry)
_Table = dict[tuple[str, str], dict[str, tuple[dict[str, str], Node, float]]]


class MemoryRegistry(Registry):
    """An in-process registry with TTLs. See the module docstring."""

    name = "memory"
    _tables: dict[str, _Table] = {}

    def __init__(self, address: str | None = None, *, ttl: float = DEFAULT_TTL) -> None:
        """Create a memory registry.

        :param address: the name of the in-process table; registries with the
            same address see each other's nodes (default ``"default"``).
        :param ttl: seconds a registration lives when ``register`` is given no TTL.
        """
        self.address = address or "default"
        self.ttl = ttl
        self._table = self._tables.setdefault(self.address, {})

    async def register(self, service: Service, *, ttl: float | None = None) -> None:
        expires = time.monotonic() + (self.ttl if ttl is None else ttl)
        nodes = self._table.setdefault((service.name, service.version), {})
        for node in service.nodes:
            nodes[node.id] = (
                dict(service.metadata),
                Node(node.id, node.address, dict(node.metadata)),
                expires,
            )

    async def deregister(self, service: Service) -> None:
        key = (service.name, service.version)
        nodes = self._table.get(key)
        if nodes is None:
            return
        for node in service.nodes:
            nodes.pop(node.id, None)
        if not nodes:
            del self._table[key]

    async def get_service(self, name: str) -> list[Service]:
        return [s for s in self._live() if s.name == name]

    async def list_services(self) -> list[Service]:
        return self._live()

    def _live(self) -> list[Service]:
        now = time.monotonic()
        services = []
        for (name, version), nodes in list(self._table.items()):
            live = []
            metadata: dict[str, str] = {}
            for node_id, (meta, node, expires) in list(nodes.items()):
                if expires <= now:
                    del nodes[node_id]
                    continue
                metadata = meta
                live.append(Node(node.id, node.address, dict(node.metadata)))
            if live:
                services.append(Service(name, version, dict(metadata), live))
            else:
                del self._table[(name, version)]
        return services
