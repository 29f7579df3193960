"""microbroker-mdns: go-micro's mDNS registry, so that the http broker reaches across a LAN.

Install it next to ``microbroker`` and select it by name::

    MICRO_REGISTRY=mdns MICRO_BROKER_ADDRESS=10.0.0.5:0 python app.py

or ``microbroker.registries.get_registry("mdns", interfaces=["eth0"])``. Its
records are go-micro's, byte for byte where go-micro fixes the bytes (see
:mod:`microbroker_mdns.txt`), so go-micro services and microbroker services on
one LAN see each other's http broker subscriptions.
"""

from __future__ import annotations

from .options import DEFAULT_DOMAIN, DEFAULT_TTL, MdnsOptions
from .registry import FALLBACK_ID_KEY, MdnsRegistry, instance_label
from .txt import TxtError, TxtRecord

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_DOMAIN",
    "DEFAULT_TTL",
    "FALLBACK_ID_KEY",
    "MdnsOptions",
    "MdnsRegistry",
    "TxtError",
    "TxtRecord",
    "__version__",
    "instance_label",
]
