"""The ``mdns`` registry: go-micro's default registry, multicast DNS on the LAN, nothing to run.

Registering a node makes this process answer mDNS queries for it, with the
records go-micro's mDNS registry writes (see :mod:`._dns` and :mod:`.txt`),
and announce it three times; deregistering sends a goodbye (TTL 0). A
lookup multicasts go-micro's query and collects the unicast answers.

Unlike go-micro, which queries afresh on every lookup and waits 100 ms each
time, a service once looked up is queried again every ``refresh_interval``
seconds in the background while it is in use, and lookups are answered from
what was heard: fast enough for the http broker's per-publish routing. A node
that leaves ``max_missed`` queries in a row unanswered (its process died, its
host went away) is out of lookups; one that says goodbye is out at once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import ipaddress
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from zeroconf import DNSIncoming, DNSQuestion, DNSRecord

from microbroker.registries import Node, Registry, RegistryError, Service, WatchEvent

from . import _dns, _net
from . import txt as _txt
from .options import MdnsOptions

logger = logging.getLogger("microbroker.mdns")

FALLBACK_ID_KEY = "mdns.id"
"""Node metadata that carries a node id too long for a DNS label (see :func:`instance_label`)."""

_MULTICAST = (_net.MDNS_GROUP, _net.MDNS_PORT)
_MAX_HEARD = 10_000  # nodes and service names kept from the network: a flood cannot grow it further
_ANSWERED_TYPES = (_dns.TYPE_ANY, _dns.TYPE_PTR)


def instance_label(node_id: str, service: str, domain: str) -> tuple[str, bool]:
    """The instance name of a node, and whether it is the fallback for an id DNS cannot carry.

    go-micro names a node ``<node id>.<service>.<domain>.``. DNS allows 63 bytes
    per label: for an id with a longer part (the http broker's ids are
    ``<topic>-<uuid>``, so a topic part over 26 characters), the instance is
    ``mb-<hash of the id>`` and the id travels in the node metadata under
    :data:`FALLBACK_ID_KEY`. go-micro cannot register such an id at all.
    """
    name = _dns.fqdn(node_id, service, domain)
    try:
        _dns.check_name(name)
    except _dns.NameError_:
        pass
    else:
        return name, False
    digest = hashlib.sha256(node_id.encode("utf-8", "surrogatepass")).hexdigest()[:40]
    name = _dns.fqdn(f"mb-{digest}", service, domain)
    try:
        _dns.check_name(name)
    except _dns.NameError_ as exc:
        raise RegistryError(f"service name {service!r} cannot be carried by mDNS: {exc}") from None
    return name, True


def _host_name() -> str:
    # go-micro: os.Hostname() + "."
    name = _dns.fqdn(socket.gethostname() or "localhost")
    try:
        _dns.check_name(name)
    except _dns.NameError_:
        return "localhost."
    return name


def _split_address(address: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    host, sep, port = address.rpartition(":")
    if not sep:
        raise RegistryError(f"node address {address!r} is not host:port")
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
        number = int(port)
    except ValueError:
        raise RegistryError(
            f"node address {address!r} must be an IP address and a port: mDNS publishes the "
            "address itself (listen on an address, or give the http broker advertise=IP:PORT)"
        ) from None
    if not 0 < number < 65536:
        raise RegistryError(f"node address {address!r} has no valid port")
    if ip.is_unspecified:
        raise RegistryError(
            f"node address {address!r} is the unspecified address; register the address "
            "peers reach (the http broker's advertise=IP:PORT)"
        )
    return ip, number


@dataclass(slots=True)
class _Local:
    """A node this registry answers for."""

    service: str
    version: str
    node: Node
    advert: _dns.Advert
    expires: float
    announcer: asyncio.Task[None] | None = None

    @property
    def loopback(self) -> bool:
        # A loopback address means nothing to another host: it is answered only to this one.
        return self.advert.ip.is_loopback


@dataclass(slots=True)
class _Seen:
    """A node heard from another registry."""

    sighting: _dns.Sighting
    node: Node
    last_seen: float
    expires: float


@dataclass(slots=True)
class _Active:
    """A service being looked up: queried every refresh interval while in use."""

    name: str
    last_used: float
    ready: float
    queries: collections.deque[float]
    pins: int = 0


@dataclass(slots=True)
class _State:
    sockets: _net.Sockets
    listen: asyncio.DatagramTransport
    respond: dict[str, asyncio.DatagramTransport] = field(default_factory=dict)
    query: dict[str, asyncio.DatagramTransport] = field(default_factory=dict)
    query_addresses: set[tuple[str, int]] = field(default_factory=set)
    ticker: asyncio.Task[None] | None = None


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, handle: Callable[[bytes, tuple[str, int]], None]) -> None:
        self._handle = handle

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        try:
            self._handle(data, (str(addr[0]), int(addr[1])))
        except Exception:  # a bad packet must never stop the registry
            logger.exception("mdns: could not handle a packet from %s", addr)

    def error_received(self, exc: Exception) -> None:
        logger.debug("mdns: socket error: %s", exc)


class MdnsRegistry(Registry):
    """go-micro's mDNS registry, for the http broker across the hosts of a LAN. See the module."""

    name = "mdns"

    def __init__(self, address: str | None = None, **options: Any) -> None:
        """Create an mDNS registry; nothing is opened until it is first used.

        :param address: the interfaces to run on, comma-separated addresses or
            names (``MICRO_REGISTRY_ADDRESS``); the same as ``interfaces``.
        :param options: see :class:`~microbroker_mdns.MdnsOptions`; each may
            also come from ``MICRO_MDNS_<OPTION>``.
        """
        self.options = MdnsOptions.from_arguments({"address": address, **options})
        self.domain = self.options.domain
        self.ttl = float(self.options.ttl)
        self.host = _host_name()
        self._state: _State | None = None
        self._opening = asyncio.Lock()
        self._local: dict[str, _Local] = {}
        self._own: set[str] = set()
        self._seen: dict[str, _Seen] = {}
        self._active: dict[str, _Active] = {}
        self._listed: dict[str, float] = {}
        self._watch_all = 0
        self._watchers: set[asyncio.Event] = set()
        self._local_ips: dict[str, bool] = {}

    # Opening and closing ---------------------------------------------------------------

    @property
    def interfaces(self) -> list[str]:
        """The IPv4 addresses of the interfaces mDNS runs on (empty until first used)."""
        return sorted(self._state.respond) if self._state is not None else []

    async def open(self) -> None:
        """Open the sockets now (the first register or lookup does it otherwise).

        Raises :class:`~microbroker.registries.RegistryError` when mDNS cannot
        run on the interfaces (none has IPv4, port 5353 is held exclusively).
        """
        if self._state is not None:
            return
        async with self._opening:
            if self._state is None:
                state = await self._open()
                self._state = state
                state.ticker = asyncio.get_running_loop().create_task(
                    self._tick(), name="microbroker-mdns-refresh"
                )

    async def _open(self) -> _State:
        try:
            sockets = _net.open_sockets(
                list(self.options.interfaces) if self.options.interfaces else None
            )
        except OSError as exc:
            raise RegistryError(
                f"the mdns registry cannot open its sockets: {exc}. Name the interfaces "
                "with MICRO_REGISTRY_ADDRESS (or MICRO_MDNS_INTERFACES); port 5353 must "
                "be shareable (SO_REUSEPORT)"
            ) from exc
        loop = asyncio.get_running_loop()
        try:
            listen, _ = await loop.create_datagram_endpoint(
                lambda: _Protocol(self._received), sock=sockets.listen
            )
            state = _State(sockets, listen)
            for address, sock in sockets.respond.items():
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: _Protocol(self._received), sock=sock
                )
                state.respond[address] = transport
            for address, sock in sockets.query.items():
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: _Protocol(self._received), sock=sock
                )
                state.query[address] = transport
                host, port = sock.getsockname()[:2]
                state.query_addresses.add((str(host), int(port)))
        except BaseException:
            sockets.close()
            raise
        logger.debug("mdns registry on %s", ", ".join(state.respond))
        return state

    async def close(self) -> None:
        """Say goodbye for every node still registered, and close the sockets.

        Once closed, nothing answers for those nodes anymore, so they are
        withdrawn rather than left to expire. The registry may be used again.
        """
        state = self._state
        if state is None:
            return
        self._state = None
        if state.ticker is not None:
            state.ticker.cancel()
        tasks = [t for t in [state.ticker] if t is not None]
        for local in self._local.values():
            if local.announcer is not None:
                local.announcer.cancel()
                tasks.append(local.announcer)
            self._multicast(state, local.advert.records(ptr=True, ttl=0), local.loopback)
        self._local.clear()
        self._seen.clear()
        self._active.clear()
        self._listed.clear()
        await asyncio.gather(*tasks, return_exceptions=True)
        for transport in [state.listen, *state.respond.values(), *state.query.values()]:
            transport.close()
        self._notify()

    # Registering -----------------------------------------------------------------------

    async def register(self, service: Service, *, ttl: float | None = None) -> None:
        """Answer for every node of ``service`` for ``ttl`` seconds (default: ``ttl`` option).

        A new node is announced at once and again 1 and 3 seconds later (go-micro's
        announcements). Registering an unchanged node again only renews it.
        """
        await self.open()
        state = self._state
        assert state is not None
        seconds = max(1, round(self.ttl if ttl is None else ttl))
        expires = time.monotonic() + seconds
        for node in service.nodes:
            instance, fallback = instance_label(node.id, service.name, self.domain)
            metadata = dict(node.metadata)
            if fallback:
                metadata[FALLBACK_ID_KEY] = node.id
            ip, port = _split_address(node.address)
            strings = _txt.encode(_txt.TxtRecord(service.name, service.version, metadata))
            advert = _dns.Advert(
                instance=instance,
                service_name=_dns.fqdn(service.name, self.domain),
                host=self.host,
                ip=ip,
                port=port,
                rdata=_txt.to_rdata(strings),
                ttl=seconds,
            )
            key = instance.lower()
            existing = self._local.get(key)
            if existing is not None and existing.advert == advert:
                existing.expires = expires
                continue
            if existing is not None and existing.announcer is not None:
                existing.announcer.cancel()
            local = _Local(
                service.name,
                service.version,
                Node(node.id, node.address, dict(node.metadata)),
                advert,
                expires,
            )
            self._local[key] = local
            self._own.add(key)
            self._seen.pop(key, None)
            if self.options.announcements:
                local.announcer = asyncio.get_running_loop().create_task(
                    self._announce(local), name=f"microbroker-mdns-announce-{node.id}"
                )
        self._notify()

    async def deregister(self, service: Service) -> None:
        """Stop answering for the nodes of ``service`` and send their goodbyes (TTL 0)."""
        state = self._state
        for node in service.nodes:
            instance, _ = instance_label(node.id, service.name, self.domain)
            key = instance.lower()
            local = self._local.pop(key, None)
            self._seen.pop(key, None)
            if local is None:
                continue
            if local.announcer is not None:
                local.announcer.cancel()
            if state is not None:
                self._multicast(state, local.advert.records(ptr=True, ttl=0), local.loopback)
        self._notify()

    async def _announce(self, local: _Local) -> None:
        delay = 1.0
        for sent in range(self.options.announcements):
            state = self._state
            if state is None:
                return
            self._multicast(state, local.advert.records(ptr=True), local.loopback)
            if sent + 1 < self.options.announcements:
                await asyncio.sleep(delay)
                delay *= 2

    # Looking up ------------------------------------------------------------------------

    async def get_service(self, name: str) -> list[Service]:
        """The live versions of ``name``: this registry's own nodes and the nodes heard.

        The first lookup of a name queries and waits ``timeout`` seconds for
        answers; later ones answer at once from what the background queries keep fresh.
        """
        await self.open()
        active = self._activate(name)
        wait = active.ready - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        return self._services(name)

    async def list_services(self) -> list[Service]:
        """Every live service and version: go-micro's ``_services`` query, then a lookup of each."""
        await self.open()
        state = self._state
        assert state is not None
        asked = time.monotonic()
        self._query(state, _dns.LIST_SERVICE)
        await asyncio.sleep(self.options.timeout)
        names = {n for n, heard in self._listed.items() if heard >= asked}
        names.update(local.service for local in self._local.values())
        names.update(seen.sighting.service for seen in self._seen.values())
        found = await asyncio.gather(*(self.get_service(n) for n in sorted(names)))
        return [service for services in found for service in services]

    async def watch(
        self, service: str | None = None, *, interval: float = 0.5
    ) -> AsyncIterator[WatchEvent]:
        """Yield a :class:`WatchEvent` as nodes appear, change or go away.

        Announcements and goodbyes are reported as they arrive; a node that
        stops answering is reported deleted after ``max_missed`` queries.
        ``interval`` is unused: changes are pushed, not polled.
        """
        await self.open()
        changed = asyncio.Event()
        self._watchers.add(changed)
        if service is None:
            self._watch_all += 1
        else:
            self._activate(service).pins += 1
        known: dict[tuple[str, str, str], Node] = {}
        versions: dict[tuple[str, str, str], Service] = {}
        try:
            while True:
                changed.clear()
                if service is not None:
                    services = await self.get_service(service)
                else:
                    services = self._all_services()
                seen: dict[tuple[str, str, str], Node] = {}
                for svc in services:
                    for node in svc.nodes:
                        key = (svc.name, svc.version, node.id)
                        seen[key] = node
                        versions[key] = svc
                for key, node in seen.items():
                    old = known.get(key)
                    if old is None or old != node:
                        yield WatchEvent(
                            "create" if old is None else "update", _one(versions[key], node)
                        )
                for key, node in known.items():
                    if key not in seen:
                        yield WatchEvent("delete", _one(versions.pop(key), node))
                known = seen
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), self.options.refresh_interval)
        finally:
            self._watchers.discard(changed)
            if service is None:
                self._watch_all -= 1
            else:
                active = self._active.get(service)
                if active is not None:
                    active.pins -= 1

    def _activate(self, name: str) -> _Active:
        now = time.monotonic()
        active = self._active.get(name)
        if active is None:
            active = self._active[name] = _Active(
                name,
                now,
                now + self.options.timeout,
                collections.deque(maxlen=self.options.max_missed + 2),
            )
            state = self._state
            if state is not None:
                self._query(state, name)
                active.queries.append(now)
        active.last_used = now
        return active

    def _services(self, name: str) -> list[Service]:
        now = time.monotonic()
        by_version: dict[str, Service] = {}
        for local in self._local.values():
            if local.service == name and local.expires > now:
                _add(by_version, name, local.version, local.node)
        active = self._active.get(name)
        for key, seen in list(self._seen.items()):
            if seen.sighting.service != name or key in self._local:
                continue
            if self._live(seen, active, now):
                _add(by_version, name, seen.sighting.version, seen.node)
        return list(by_version.values())

    def _all_services(self) -> list[Service]:
        names = {local.service for local in self._local.values()}
        names.update(seen.sighting.service for seen in self._seen.values())
        return [service for n in sorted(names) for service in self._services(n)]

    def _live(self, seen: _Seen, active: _Active | None, now: float) -> bool:
        if seen.expires <= now:
            return False
        if active is None:
            return True
        cutoff = now - self.options.timeout
        missed = sum(1 for sent in active.queries if seen.last_seen < sent <= cutoff)
        return missed < self.options.max_missed

    # The background round --------------------------------------------------------------

    async def _tick(self) -> None:
        options = self.options
        while True:
            state = self._state
            if state is None:
                return
            now = time.monotonic()
            for name, active in list(self._active.items()):
                if active.pins <= 0 and now - active.last_used > options.idle_after:
                    del self._active[name]
                    continue
                self._query(state, name)
                active.queries.append(now)
            if self._watch_all:
                self._query(state, _dns.LIST_SERVICE)
                for name, heard in list(self._listed.items()):
                    if now - heard <= 2 * options.refresh_interval + options.timeout:
                        self._activate(name)
            await asyncio.sleep(options.timeout)
            try:
                self._sweep()
            except Exception:  # a failed round must not end the refreshing
                logger.exception("mdns: refresh round failed")
            await asyncio.sleep(max(options.refresh_interval - options.timeout, 0.0))

    def _sweep(self) -> None:
        """Drop what expired or stopped answering; withdraw own nodes that were not renewed."""
        now = time.monotonic()
        changed = False
        for key, seen in list(self._seen.items()):
            if not self._live(seen, self._active.get(seen.sighting.service), now):
                del self._seen[key]
                changed = True
        state = self._state
        for key, local in list(self._local.items()):
            if local.expires <= now:
                del self._local[key]
                if local.announcer is not None:
                    local.announcer.cancel()
                if state is not None:
                    self._multicast(state, local.advert.records(ptr=True, ttl=0), local.loopback)
                changed = True
        for name, heard in list(self._listed.items()):
            if now - heard > self.ttl:
                del self._listed[name]
        if changed:
            self._notify()

    # Packets ---------------------------------------------------------------------------

    def _received(self, data: bytes, source: tuple[str, int]) -> None:
        state = self._state
        if state is None:
            return
        message = _dns.parse(data, source)
        if message is None:
            return
        if message.is_query():
            if source not in state.query_addresses:  # our own queries: we answer ourselves
                self._answer(state, message, source)
        else:
            self._heard(message, source)

    def _is_local(self, ip: str) -> bool:
        known = self._local_ips.get(ip)
        if known is None:
            if len(self._local_ips) > 4096:
                self._local_ips.clear()
            known = self._local_ips[ip] = _net.is_local(ip)
        return known

    def _heard(self, message: DNSIncoming, source: tuple[str, int]) -> None:
        now = time.monotonic()
        changed = False
        found, gone = _dns.sightings(message, self.domain)
        for sighting in found:
            key = sighting.instance
            if key in self._own:
                continue
            if sighting.ip.is_loopback and not self._is_local(source[0]):
                # Another host's loopback address would lead to this host's own services.
                continue
            node = _node(sighting)
            old = self._seen.get(key)
            if old is None and len(self._seen) >= _MAX_HEARD:
                logger.warning("mdns: ignoring %s: %d nodes already known", key, _MAX_HEARD)
                continue
            if old is None or old.node != node or old.sighting.version != sighting.version:
                changed = True
            self._seen[key] = _Seen(sighting, node, now, now + sighting.ttl)
        for key in gone:
            if key not in self._own and self._seen.pop(key, None) is not None:
                changed = True
        for name in _dns.listed_services(message, self.domain):
            if name in self._listed or len(self._listed) < _MAX_HEARD:
                self._listed[name] = now
        if changed:
            self._notify()

    def _answer(self, state: _State, message: DNSIncoming, source: tuple[str, int]) -> None:
        local_peer: bool | None = None
        for question in message.questions:
            packets = self._answers(question)
            if not packets:
                continue
            unicast = source[1] != _net.MDNS_PORT or question.unicast
            for records, loopback in packets:
                if loopback:
                    if local_peer is None:
                        local_peer = self._is_local(source[0])
                    if not local_peer:
                        continue
                if unicast:
                    for packet in _dns.response(records, question=question, unicast_id=message.id):
                        state.listen.sendto(packet, source)
                else:
                    self._multicast(state, records, loopback, question=question)

    def _answers(self, question: DNSQuestion) -> list[tuple[list[DNSRecord], bool]]:
        """The answer messages to ``question``: one per node, as go-micro's one server per node."""
        name = question.name.lower()
        kind = question.type
        domain = self.domain
        now = time.monotonic()
        live = [local for local in self._local.values() if local.expires > now]
        if not live:
            return []
        out: list[tuple[list[DNSRecord], bool]] = []
        if name == _dns.fqdn(_dns.LIST_SERVICE, domain).lower():
            if kind in _ANSWERED_TYPES:
                services: dict[str, bool] = {}
                for local in live:
                    services[local.service] = services.get(local.service, True) and local.loopback
                for service, loopback in services.items():
                    out.append(
                        (_dns.list_records(service, domain, self.host, int(self.ttl)), loopback)
                    )
            return out
        if name == _dns.fqdn(_dns.LIST_SERVICE, "_dns-sd._udp", domain).lower():
            if kind in _ANSWERED_TYPES:
                record = _dns.meta_record(domain, int(self.ttl))
                out.append(([record], all(local.loopback for local in live)))
            return out
        own = self._local.get(name)
        if own is not None and own.expires > now:
            records = own.advert.records(ptr=False)
            wanted = {
                _dns.TYPE_SRV: (_dns.TYPE_SRV, _dns.TYPE_A, _dns.TYPE_AAAA),
                _dns.TYPE_TXT: (_dns.TYPE_TXT,),
                _dns.TYPE_A: (_dns.TYPE_A,),
                _dns.TYPE_AAAA: (_dns.TYPE_AAAA,),
            }.get(kind)
            if wanted is not None:
                records = [r for r in records if r.type in wanted]
            return [(records, own.loopback)] if records else []
        if kind in _ANSWERED_TYPES:
            for local in live:
                if local.advert.service_name.lower() == name:
                    out.append((local.advert.records(ptr=True), local.loopback))
        return out

    # Sending ---------------------------------------------------------------------------

    def _query(self, state: _State, name: str) -> None:
        packet = _dns.query(_dns.fqdn(name, self.domain))
        for transport in state.query.values():
            transport.sendto(packet, _MULTICAST)

    def _multicast(
        self,
        state: _State,
        records: list[DNSRecord],
        loopback: bool,
        *,
        question: DNSQuestion | None = None,
    ) -> None:
        packets = _dns.response(records, question=question)
        for address, transport in state.respond.items():
            if loopback and not ipaddress.ip_address(address).is_loopback:
                continue
            for packet in packets:
                transport.sendto(packet, _MULTICAST)

    def _notify(self) -> None:
        for event in self._watchers:
            event.set()


def _node(sighting: _dns.Sighting) -> Node:
    metadata = dict(sighting.metadata)
    node_id = sighting.node_id
    fallback = metadata.pop(FALLBACK_ID_KEY, None)
    if fallback is not None:
        # Only trust the carried id if the instance name is its hash, as register made it.
        digest = hashlib.sha256(fallback.encode("utf-8", "surrogatepass")).hexdigest()[:40]
        if node_id == f"mb-{digest}":
            node_id = fallback
    return Node(node_id, sighting.address, metadata)


def _add(by_version: dict[str, Service], name: str, version: str, node: Node) -> None:
    service = by_version.get(version)
    if service is None:
        service = by_version[version] = Service(name, version, {}, [])
    service.nodes.append(Node(node.id, node.address, dict(node.metadata)))


def _one(service: Service, node: Node) -> Service:
    return Service(service.name, service.version, dict(service.metadata), [node])
