"""Selecting a broker, client, server or registry by name, as the environment says."""

from __future__ import annotations

import inspect
import os
from typing import Any

from ._broker import Broker, Handler, Subscriber
from ._errors import PluginError, PluginNotFound
from ._message import Message
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


class UnavailableBroker(Broker):
    """Stands for a broker that could not be made (not installed, or broken), until it is used.

    A :class:`~microbroker.Service` made from an environment whose
    ``MICRO_BROKER`` names a broker that is not installed still registers its
    subscribers and events, so that a test can give it another broker
    (``microbroker.testing``); connecting raises the error that made it.
    """

    name = "unavailable"

    def __init__(self, error: PluginNotFound | PluginError) -> None:
        super().__init__()
        self.error = error

    @property
    def connected(self) -> bool:
        return False

    async def connect(self) -> None:
        raise self.error

    async def disconnect(self) -> None:
        return None

    async def send(self, topic: str, message: Message, **options: object) -> None:
        raise self.error

    async def receive(
        self,
        topic: str,
        deliver: Handler,
        *,
        queue: str | None,
        auto_ack: bool,
        **options: object,
    ) -> Subscriber:
        raise self.error

    def __repr__(self) -> str:
        return f"<UnavailableBroker: {self.error}>"
