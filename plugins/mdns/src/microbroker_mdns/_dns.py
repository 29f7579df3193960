"""DNS messages as go-micro's mDNS registry writes and reads them, on zeroconf's wire codec.

go-micro (``registry/mdns_registry.go`` and ``internal/util/mdns``) names a node

    <node id>.<service name>.<domain>.      (instance; e.g. "t-1a2b.micro.http.broker.micro.")

and answers a PTR query for ``<service name>.<domain>.`` with one message per
node holding, in its answer section, the PTR to the instance, the SRV (priority
10, weight 1, the node's port, the host name as target), the A or AAAA record
of the host name (the node's address) and the TXT record (:mod:`.txt`), all
with class IN and a TTL of 120 seconds. Every service also answers
``_services.<domain>.`` with a PTR to ``<service name>._services.<domain>.``
(plus an SRV on port 9999, an A record 0.0.0.0 and an empty TXT): that is how
go-micro lists services. A departing node sends the SRV, A and TXT records
again with TTL 0.

zeroconf's ``DNSIncoming``/``DNSOutgoing`` do the wire format (name
compression included); zeroconf's service layer is not used, since it only
knows ``_x._tcp.local.`` names and go-micro's are not of that form.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from zeroconf import (
    DNSAddress,
    DNSIncoming,
    DNSOutgoing,
    DNSPointer,
    DNSQuestion,
    DNSRecord,
    DNSService,
    DNSText,
)

from . import txt as _txt

TYPE_A = 1
TYPE_PTR = 12
TYPE_TXT = 16
TYPE_AAAA = 28
TYPE_SRV = 33
TYPE_ANY = 255
CLASS_IN = 1

FLAGS_QUERY = 0x0000
FLAGS_RESPONSE = 0x8400  # QR and AA, as RFC 6762 section 18 and go-micro's server set them
FLAGS_OPCODE_MASK = 0x7800
FLAGS_RCODE_MASK = 0x000F

SRV_PRIORITY = 10
SRV_WEIGHT = 1
LIST_PORT = 9999  # the port of go-micro's "_services" wildcard entry
LIST_SERVICE = "_services"

MAX_LABEL = 63
MAX_NAME = 253


class NameError_(ValueError):
    """A name that DNS cannot carry (a label over 63 bytes, an empty label, too long)."""


def fqdn(*parts: str) -> str:
    """Join name parts into a fully qualified name, the dots at their ends trimmed (go-micro's)."""
    return ".".join(p.strip(".") for p in parts) + "."


def check_name(name: str) -> None:
    """Raise :class:`NameError_` unless ``name`` (fully qualified) fits DNS's limits."""
    raw = name.rstrip(".")
    if len(raw.encode("utf-8")) > MAX_NAME:
        raise NameError_(f"{name!r} is longer than DNS's {MAX_NAME} bytes")
    for label in raw.split("."):
        size = len(label.encode("utf-8"))
        if size == 0:
            raise NameError_(f"{name!r} has an empty label")
        if size > MAX_LABEL:
            raise NameError_(f"{name!r} has a label of {size} bytes; DNS allows {MAX_LABEL}")


def strip_suffix(name: str, suffix: str) -> str | None:
    """``name`` without ``suffix`` (case-insensitively), or ``None`` if it does not end so."""
    if len(name) > len(suffix) and name[-len(suffix) :].lower() == suffix.lower():
        return name[: -len(suffix)]
    return None


@dataclass(slots=True)
class Advert:
    """What one registered node answers with: go-micro's ``MDNSService`` for that node."""

    instance: str
    """``<node id>.<service>.<domain>.``"""
    service_name: str
    """``<service>.<domain>.``"""
    host: str
    """The SRV target and the name of the address record (the host name, as go-micro)."""
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    port: int
    rdata: bytes
    ttl: int

    def records(self, *, ptr: bool, ttl: int | None = None) -> list[DNSRecord]:
        """PTR (if asked), SRV, A or AAAA, TXT: the answer section go-micro's server sends."""
        ttl = self.ttl if ttl is None else ttl
        out: list[DNSRecord] = []
        if ptr:
            out.append(DNSPointer(self.service_name, TYPE_PTR, CLASS_IN, ttl, self.instance))
        out.append(
            DNSService(
                self.instance,
                TYPE_SRV,
                CLASS_IN,
                ttl,
                SRV_PRIORITY,
                SRV_WEIGHT,
                self.port,
                self.host,
            )
        )
        kind = TYPE_A if self.ip.version == 4 else TYPE_AAAA
        out.append(DNSAddress(self.host, kind, CLASS_IN, ttl, self.ip.packed))
        out.append(DNSText(self.instance, TYPE_TXT, CLASS_IN, ttl, self.rdata))
        return out


def list_records(service: str, domain: str, host: str, ttl: int) -> list[DNSRecord]:
    """go-micro's answer to ``_services.<domain>.`` for one service (its wildcard entry)."""
    enum = fqdn(LIST_SERVICE, domain)
    instance = fqdn(service, LIST_SERVICE, domain)
    return [
        DNSPointer(enum, TYPE_PTR, CLASS_IN, ttl, instance),
        DNSService(instance, TYPE_SRV, CLASS_IN, ttl, SRV_PRIORITY, SRV_WEIGHT, LIST_PORT, host),
        DNSAddress(host, TYPE_A, CLASS_IN, ttl, bytes(4)),
        DNSText(instance, TYPE_TXT, CLASS_IN, ttl, b""),
    ]


def meta_record(domain: str, ttl: int) -> DNSRecord:
    """The DNS-SD meta-query answer (RFC 6763 section 9) go-micro's wildcard entry gives."""
    return DNSPointer(
        fqdn(LIST_SERVICE, "_dns-sd._udp", domain),
        TYPE_PTR,
        CLASS_IN,
        ttl,
        fqdn(LIST_SERVICE, domain),
    )


def response(
    records: list[DNSRecord], *, question: DNSQuestion | None = None, unicast_id: int | None = None
) -> list[bytes]:
    """A response message: the question echoed (go-micro's client requires it), then the answers.

    ``unicast_id`` is the query's id for a unicast reply; a multicast message has id 0.
    """
    out = DNSOutgoing(FLAGS_RESPONSE, multicast=unicast_id is None, id_=unicast_id or 0)
    if question is not None:
        out.add_question(question)
    for record in records:
        out.add_answer_at_time(record, 0)
    return out.packets()


def query(name: str, kind: int = TYPE_PTR) -> bytes:
    """A one-question query, as go-micro's client sends it (class IN, no unicast bit)."""
    out = DNSOutgoing(FLAGS_QUERY, multicast=True)
    out.add_question(DNSQuestion(name, kind, CLASS_IN))
    return out.packets()[0]


def parse(data: bytes, source: tuple[str, int]) -> DNSIncoming | None:
    """The message in ``data``, or ``None`` when it is not a valid mDNS message."""
    try:
        message = DNSIncoming(data, source)
    except Exception:
        return None
    if not message.valid or message.flags & (FLAGS_OPCODE_MASK | FLAGS_RCODE_MASK):
        # RFC 6762 section 18: a non-zero opcode or rcode is silently ignored (go-micro too).
        return None
    return message


@dataclass(slots=True)
class Sighting:
    """A node seen in one message: its instance name, its TXT and where it is reached."""

    instance: str
    service: str
    node_id: str
    version: str
    metadata: dict[str, str]
    address: str
    """``host:port`` (``[v6]:port``), go-micro's ``net.JoinHostPort``; IPv4 is preferred."""
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    ttl: int


def sightings(message: DNSIncoming, domain: str) -> tuple[list[Sighting], list[str]]:
    """The complete nodes a response carries, and the instance names it says goodbye to.

    As go-micro's client, a node is taken from one message: its SRV (port and
    host name), the address record of that host name, and its TXT, which
    names the service. A TTL of 0 on the SRV or TXT is a goodbye.
    """
    srv: dict[str, DNSService] = {}
    text: dict[str, DNSText] = {}
    addresses: dict[str, list[DNSAddress]] = {}
    suffix = "." + domain.strip(".") + "."
    for record in message.answers():
        if isinstance(record, DNSService):
            srv[record.key] = record
        elif isinstance(record, DNSText):
            text[record.key] = record
        elif isinstance(record, DNSAddress):
            addresses.setdefault(record.key, []).append(record)
    found: list[Sighting] = []
    gone: list[str] = []
    for key in srv.keys() | text.keys():
        if not key.endswith(suffix):
            continue
        s = srv.get(key)
        t = text.get(key)
        if (s is not None and s.ttl == 0) or (t is not None and t.ttl == 0):
            gone.append(key)
            continue
        if s is None or t is None:
            continue
        try:
            content = _txt.decode(_txt.from_rdata(t.text or b""))
        except _txt.TxtError:
            continue
        if not content.service:
            continue
        node_id = strip_suffix(t.name, "." + fqdn(content.service, domain))
        if node_id is None:
            continue
        ip = _pick_ip(addresses.get(s.server_key, []))
        if ip is None or not s.port:
            continue
        host = str(ip) if ip.version == 4 else f"[{ip}]"
        found.append(
            Sighting(
                instance=key,
                service=content.service,
                node_id=node_id,
                version=content.version,
                metadata=content.metadata,
                address=f"{host}:{s.port}",
                ip=ip,
                ttl=min(s.ttl, t.ttl),
            )
        )
    return found, gone


def _pick_ip(records: list[DNSAddress]) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    v6 = None
    for record in records:
        if record.ttl == 0 or record.address is None:
            continue
        try:
            ip = ipaddress.ip_address(record.address)
        except ValueError:
            continue
        if ip.version == 4:
            return ip  # go-micro prefers IPv4
        v6 = v6 or ip
    return v6


def listed_services(message: DNSIncoming, domain: str) -> list[str]:
    """The service names of go-micro's ``_services`` answers in ``message``."""
    enum = fqdn(LIST_SERVICE, domain).lower()
    suffix = "." + fqdn(LIST_SERVICE, domain)
    names = []
    for record in message.answers():
        if isinstance(record, DNSPointer) and record.key == enum and record.ttl:
            name = strip_suffix(record.alias, suffix)
            if name:
                names.append(name)
    return names
