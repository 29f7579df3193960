"""The options of the mDNS registry.

Every option is a keyword argument of :class:`~microbroker_mdns.MdnsRegistry`
(and so of ``microbroker.registries.get_registry("mdns", ...)``). An option
not given as an argument is read from ``MICRO_MDNS_<OPTION>``
(``MICRO_MDNS_INTERFACES=eth0``, ``MICRO_MDNS_REFRESH_INTERVAL=0.5``), and
``address`` (``MICRO_REGISTRY_ADDRESS``) is another way to name the interfaces.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

ENV_PREFIX = "MICRO_MDNS_"
DEFAULT_DOMAIN = "micro"
"""go-micro's ``mdnsDomain``: names end in ``.micro.``, not ``.local.``."""
DEFAULT_TTL = 120
"""go-micro's record TTL (``internal/util/mdns/zone.go``: ``defaultTTL = 120``)."""


@dataclass(slots=True)
class MdnsOptions:
    """The registry's settings. Defaults are the ones documented in the README."""

    interfaces: Sequence[str] | None = None
    """Where mDNS runs: IPv4 addresses or interface names (``eth0``). ``None``: every
    interface with an IPv4 address, loopback included."""
    domain: str = DEFAULT_DOMAIN
    """The mDNS domain; go-micro's is ``micro``."""
    ttl: float = DEFAULT_TTL
    """TTL in seconds of the records of a registration made without one; go-micro's 120."""
    timeout: float = 0.1
    """Seconds the first lookup of a service waits for answers (go-micro's 100 ms)."""
    refresh_interval: float = 1.0
    """Seconds between the queries that keep a looked-up service's nodes fresh."""
    max_missed: int = 3
    """Queries in a row a node may leave unanswered before it is out of lookups."""
    announcements: int = 3
    """Unsolicited announcements of a new node, 1 s then 2 s apart (go-micro's three)."""
    idle_after: float = 30.0
    """Seconds without a lookup after which a service is no longer queried."""

    @classmethod
    def from_arguments(
        cls,
        arguments: Mapping[str, Any],
        environ: Mapping[str, str] | None = None,
    ) -> MdnsOptions:
        """Build the options from keyword arguments, then ``MICRO_MDNS_*`` variables.

        ``address`` (a comma-separated list of interfaces) is accepted as
        ``interfaces``; giving both is an error.
        """
        environ = os.environ if environ is None else environ
        arguments = dict(arguments)
        address = arguments.pop("address", None)
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(arguments) - set(names))
        if unknown:
            raise TypeError(
                f"the mdns registry does not take option(s) {', '.join(unknown)}; "
                f"it takes: address, {', '.join(names)}"
            )
        if address and arguments.get("interfaces") is not None:
            raise ValueError("give the interfaces as address or as interfaces, not both")
        if address:
            arguments["interfaces"] = address
        values: dict[str, Any] = {}
        for name, spec in names.items():
            if name in arguments and arguments[name] is not None:
                values[name] = arguments[name]
                continue
            raw = environ.get(ENV_PREFIX + name.upper())
            if raw is not None and raw.strip():
                values[name] = _parse_env(name, raw, spec.default)
        if isinstance(values.get("interfaces"), str):
            values["interfaces"] = split_interfaces(values["interfaces"])
        options = cls(**values)
        options.validate()
        return options

    def validate(self) -> None:
        """Raise ``ValueError`` for settings that cannot work, saying which and why."""
        domain = self.domain.strip(".")
        if not domain or any(not label for label in domain.split(".")):
            raise ValueError(f"domain {self.domain!r} is not a DNS name")
        self.domain = domain
        if not 1 <= self.ttl <= 0x7FFFFFFF:
            raise ValueError(f"ttl must be at least 1 second, not {self.ttl}")
        for name in ("timeout", "refresh_interval", "idle_after"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, not {getattr(self, name)}")
        if self.max_missed < 1:
            raise ValueError("max_missed must be at least 1")
        if self.announcements < 0:
            raise ValueError("announcements must be 0 or more")
        if self.interfaces is not None:
            self.interfaces = [str(i).strip() for i in self.interfaces if str(i).strip()]
            if not self.interfaces:
                self.interfaces = None


def split_interfaces(text: str) -> list[str]:
    """``"eth0, 10.0.0.2"`` -> ``["eth0", "10.0.0.2"]``."""
    return [part.strip() for part in text.split(",") if part.strip()]


def is_address(text: str) -> bool:
    """Whether ``text`` is an IPv4 address (rather than an interface name)."""
    try:
        return ipaddress.ip_address(text).version == 4
    except ValueError:
        return False


def _parse_env(name: str, raw: str, default: Any) -> Any:
    if name == "interfaces":
        return split_interfaces(raw)
    if isinstance(default, bool):
        return raw.strip().lower() in ("1", "true", "yes", "on")
    try:
        if isinstance(default, int) and not isinstance(default, bool) and name != "ttl":
            return int(raw)
        if isinstance(default, int | float):
            return float(raw)
    except ValueError:
        raise ValueError(f"{ENV_PREFIX}{name.upper()}={raw!r} is not a number") from None
    return raw.strip()
