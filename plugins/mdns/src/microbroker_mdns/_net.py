"""The sockets of the registry: zeroconf's mDNS listen/respond sockets plus one query socket each.

- one listen socket on ``0.0.0.0:5353`` (``SO_REUSEADDR`` and ``SO_REUSEPORT``,
  so that every process of the host shares the port), a member of
  224.0.0.251 on each chosen interface: it hears queries and announcements;
- one respond socket per interface (bound to its address, port 5353,
  ``IP_MULTICAST_IF`` set), to send multicast on that interface;
- one query socket per interface on an ephemeral port, as go-micro's client
  queries: responders answer it by unicast, so each process gets its own
  answers even when many share port 5353.

Only IPv4 is used (go-micro prefers IPv4 addresses and queries both).
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import socket
import struct
import sys
from dataclasses import dataclass, field

from zeroconf import InterfaceChoice, IPVersion, create_sockets

from .options import is_address

MDNS_GROUP = "224.0.0.251"
MDNS_PORT = 5353

# Linux: deliver to the listen socket only the groups joined on it, so that an
# interface the registry was told to stay off does not leak in through another
# process's membership (the default delivers every joined group to every socket).
_IP_MULTICAST_ALL = getattr(
    socket, "IP_MULTICAST_ALL", 49 if sys.platform.startswith("linux") else None
)
_SIOCGIFADDR = 0x8915


class InterfaceError(OSError):
    """An interface that cannot be used for mDNS (unknown, no IPv4 address, not this host's)."""


@dataclass(slots=True)
class Sockets:
    """The open sockets, by role (see the module docstring)."""

    listen: socket.socket
    respond: dict[str, socket.socket] = field(default_factory=dict)
    """interface address -> its respond socket"""
    query: dict[str, socket.socket] = field(default_factory=dict)
    """interface address -> its query socket"""

    def close(self) -> None:
        """Close every socket."""
        for sock in [self.listen, *self.respond.values(), *self.query.values()]:
            with contextlib.suppress(OSError):
                sock.close()


def interface_address(name: str) -> str:
    """The IPv4 address of interface ``name`` (Linux), or ``name`` itself if it is an address."""
    if is_address(name):
        return name
    if not sys.platform.startswith("linux"):
        raise InterfaceError(f"name interfaces by their IPv4 address here, not {name!r}")
    import fcntl

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            packed = fcntl.ioctl(
                sock.fileno(), _SIOCGIFADDR, struct.pack("256s", name.encode()[:15])
            )
        except OSError as exc:
            raise InterfaceError(
                f"interface {name!r} has no IPv4 address or does not exist: {exc.strerror}"
            ) from None
    return socket.inet_ntoa(packed[20:24])


def is_local(ip: str) -> bool:
    """Whether ``ip`` is an address of this host (loopback included): it can be bound."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if address.is_loopback:
        return True
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((ip, 0))
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                return False
            raise
    return True


def open_sockets(interfaces: list[str] | None) -> Sockets:
    """Open the sockets on ``interfaces`` (addresses or names; ``None``: all IPv4 interfaces).

    Raises :class:`InterfaceError` when an interface cannot be used, and
    ``OSError`` when port 5353 cannot be shared (another mDNS stack holds it
    without ``SO_REUSEPORT``).
    """
    choice: InterfaceChoice | list[str | int]
    if interfaces is None:
        choice = InterfaceChoice.All
    else:
        addresses = [interface_address(i) for i in interfaces]
        for address in addresses:
            if not is_local(address):
                raise InterfaceError(f"{address} is not an address of this host")
        choice = list(dict.fromkeys(addresses))
    listen, respond = create_sockets(interfaces=choice, ip_version=IPVersion.V4Only)
    if listen is None:  # only for unicast=True, which is not asked for
        raise OSError("zeroconf made no listen socket")
    if _IP_MULTICAST_ALL is not None:
        with contextlib.suppress(OSError):
            listen.setsockopt(socket.IPPROTO_IP, _IP_MULTICAST_ALL, 0)
    sockets = Sockets(listen)
    try:
        for sock in respond:
            address = sock.getsockname()[0]
            sockets.respond[address] = sock
            sockets.query[address] = _query_socket(address)
    except BaseException:
        for sock in respond:
            sock.close()
        sockets.close()
        raise
    if not sockets.respond:
        sockets.close()
        raise InterfaceError(
            f"mDNS could not join {MDNS_GROUP} on any of the interfaces "
            f"({'all' if interfaces is None else ', '.join(interfaces)})"
        )
    return sockets


def _query_socket(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((address, 0))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(address))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, struct.pack("B", 255))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, struct.pack("B", 1))
    except BaseException:
        sock.close()
        raise
    return sock
