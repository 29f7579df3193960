"""The catalog of broker plugins known to exist, for install hints only.

Nothing is loaded or treated differently because it is listed here: plugins are
found through entry points, first-party and third-party alike. This table only
lets :class:`~microbroker.BrokerNotFound` answer a name that is not installed
(``MICRO_BROKER=natz``) with the distribution that provides it. A published
third-party plugin is welcome to a line.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class KnownPlugin:
    """A broker plugin that can be installed."""

    broker: str
    """The name it registers (``MICRO_BROKER=<broker>``)."""
    distribution: str
    """The distribution to install."""
    source: str | None = None
    """Its folder in microbroker's own repository, for installing from a checkout."""


KNOWN_BROKERS: tuple[KnownPlugin, ...] = (
    KnownPlugin("nats", "microbroker-nats", "plugins/nats"),
    KnownPlugin("mqtt", "microbroker-mqtt", "plugins/mqtt"),
    KnownPlugin("kafka", "microbroker-kafka", "plugins/kafka"),
    KnownPlugin("rabbitmq", "microbroker-rabbitmq", "plugins/rabbitmq"),
    KnownPlugin("redis", "microbroker-redis", "plugins/redis"),
)


def known_broker(name: str, *, exclude: Collection[str] = ()) -> str | None:
    """The known broker called ``name``, or the closest one to it, unless it is in ``exclude``."""
    names = [plugin.broker for plugin in KNOWN_BROKERS if plugin.broker not in exclude]
    if name in names:
        return name
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
    return close[0] if close else None


def install_hint(broker: str) -> str:
    """How to install the plugin of ``broker``: by name, and from a checkout when it has a folder.

    Both, because which one works depends on the user: the name once the
    plugin is published on PyPI, the folder in a checkout of the repository
    (where the plugins are before their first release).
    """
    for plugin in KNOWN_BROKERS:
        if plugin.broker == broker:
            if plugin.source is None:
                return plugin.distribution
            return (
                f"{plugin.distribution} from PyPI, or from a checkout of microbroker's "
                f"repository: pip install ./{plugin.source}"
            )
    return f"microbroker-{broker}"
