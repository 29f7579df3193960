"""The broker's options: declared once, here, with their defaults and environment variables."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

ENV_PREFIX = "MICRO_TEMPLATE_"


@dataclass(frozen=True, slots=True)
class TemplateOptions:
    """Options of the template broker (a real plugin has its TLS, auth, timeouts... here).

    Each option comes from a keyword argument of ``get_broker("template", ...)``,
    else from ``MICRO_TEMPLATE_<NAME>`` in the environment, else its default.
    """

    max_pending: int = 10_000
    """Messages a subscription holds before a publish to it waits for room."""
    publish_timeout: float = 10.0
    """Seconds a publish waits for room before it raises PublishError."""

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> TemplateOptions:
        """The options given as keyword arguments, completed from the environment."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise TypeError(
                f"the template broker does not take option(s) {', '.join(unknown)}; "
                f"it takes: address, {', '.join(known)}"
            )
        values: dict[str, Any] = {}
        for name, field in known.items():
            if name in options:
                values[name] = options[name]
                continue
            raw = os.environ.get(ENV_PREFIX + name.upper())
            if raw is not None:
                kind: type[Any] = type(field.default)
                try:
                    values[name] = kind(raw)
                except ValueError:
                    raise ValueError(
                        f"{ENV_PREFIX}{name.upper()}={raw!r} is not a valid {kind.__name__}"
                    ) from None
        made = cls(**values)
        if made.max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        return made

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
