"""AsyncAPI 3.0 documents of microbroker services, and a page that shows them offline.

>>> doc = microbroker.asyncapi.document(service)     # JSON-ready dict
>>> html = microbroker.asyncapi.page(doc)            # one self-contained HTML file

The command line writes and serves them: ``microbroker docs module:service``
and ``microbroker docs serve module:service`` (see docs/asyncapi.md).
"""

from __future__ import annotations

import importlib
import json
from typing import Any

from ._document import ASYNCAPI_VERSION, HEADERS_SCHEMA, document
from ._page import content_security_policy, page
from ._schema import Schemas

__all__ = [
    "ASYNCAPI_VERSION",
    "HEADERS_SCHEMA",
    "Schemas",
    "content_security_policy",
    "document",
    "page",
    "to_json",
    "to_yaml",
]


def to_json(doc: dict[str, Any]) -> str:
    """``doc`` as indented JSON text (keys in the document's order)."""
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def to_yaml(doc: dict[str, Any]) -> str:
    """``doc`` as YAML text. Needs PyYAML, which the core does not depend on.

    Raises :class:`ModuleNotFoundError` naming PyYAML when it is not installed.
    """
    try:
        # Imported by name: PyYAML is optional, and mypy need not know its stubs.
        yaml = importlib.import_module("yaml")
    except ImportError as exc:
        raise ModuleNotFoundError(
            "YAML output needs PyYAML, which is not installed: pip install PyYAML "
            "(or write JSON, which AsyncAPI tools read as well)",
            name="yaml",
        ) from exc
    text: str = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=100)
    return text
