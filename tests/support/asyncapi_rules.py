"""AsyncAPI 3.0 rules that can be checked without network, for the generated documents.

The official JSON Schema of the specification checks the shape of each object
(tests/cli/test_docs.py runs it); these rules check what a JSON Schema cannot:
that every ``$ref`` points at something in the document, that operations point
at channels and at messages *of their own channel*, that channel addresses
define their parameters, that component keys have the allowed form, and that
payload schemas are consistent (``required`` names declared properties...).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

COMPONENT_KEY = re.compile(r"^[a-zA-Z0-9.\-_]+$")
EXTENSION = re.compile(r"^x-[\w.\-]+$")
JSON_TYPES = {"null", "boolean", "object", "array", "number", "string", "integer"}

_FIELDS = {
    "document": {
        "asyncapi",
        "id",
        "info",
        "servers",
        "defaultContentType",
        "channels",
        "operations",
        "components",
    },
    "info": {
        "title",
        "version",
        "description",
        "termsOfService",
        "contact",
        "license",
        "tags",
        "externalDocs",
    },
    "server": {
        "host",
        "protocol",
        "protocolVersion",
        "pathname",
        "description",
        "title",
        "summary",
        "variables",
        "security",
        "tags",
        "externalDocs",
        "bindings",
    },
    "channel": {
        "address",
        "messages",
        "title",
        "summary",
        "description",
        "servers",
        "parameters",
        "tags",
        "externalDocs",
        "bindings",
    },
    "operation": {
        "action",
        "channel",
        "title",
        "summary",
        "description",
        "security",
        "tags",
        "externalDocs",
        "bindings",
        "traits",
        "messages",
        "reply",
    },
    "message": {
        "headers",
        "payload",
        "correlationId",
        "contentType",
        "name",
        "title",
        "summary",
        "description",
        "tags",
        "externalDocs",
        "bindings",
        "examples",
        "traits",
    },
}
_REQUIRED = {
    "document": {"asyncapi", "info"},
    "info": {"title", "version"},
    "server": {"host", "protocol"},
    "operation": {"action", "channel"},
}
_COMPONENT_KINDS = {
    "schemas",
    "servers",
    "channels",
    "operations",
    "messages",
    "securitySchemes",
    "serverVariables",
    "parameters",
    "correlationIds",
    "replies",
    "replyAddresses",
    "externalDocs",
    "tags",
    "operationTraits",
    "messageTraits",
    "serverBindings",
    "channelBindings",
    "operationBindings",
    "messageBindings",
}


def problems(doc: dict[str, Any]) -> list[str]:
    """What is wrong with ``doc`` under the rules above; empty when it follows them."""
    out: list[str] = []
    out += _fields("document", doc, "")
    if doc.get("asyncapi") != "3.0.0":
        out.append(f"asyncapi is {doc.get('asyncapi')!r}, not '3.0.0'")
    info = doc.get("info")
    if isinstance(info, dict):
        out += _fields("info", info, "info")
        for key in ("title", "version"):
            if key in info and not isinstance(info[key], str):
                out.append(f"info.{key} is not a string")
    for name, server in _mapping(doc, "servers", out):
        out += _fields("server", server, f"servers.{name}")
        host = server.get("host")
        if isinstance(host, str) and "://" in host:
            out.append(f"servers.{name}.host {host!r} holds a scheme (that is the protocol)")
    for ref, target in _refs(doc, "#"):
        if resolve(doc, ref) is None:
            out.append(f"{target}: $ref {ref!r} points at nothing in the document")
    for name, channel in _mapping(doc, "channels", out):
        out += _channel(doc, name, channel)
    for name, operation in _mapping(doc, "operations", out):
        out += _operation(doc, name, operation)
    components = doc.get("components", {})
    if not isinstance(components, dict):
        out.append("components is not an object")
        components = {}
    for kind, entries in components.items():
        if kind not in _COMPONENT_KINDS and not EXTENSION.match(kind):
            out.append(f"components.{kind} is not a component kind")
            continue
        if not isinstance(entries, dict):
            out.append(f"components.{kind} is not an object")
            continue
        for key in entries:
            if not COMPONENT_KEY.match(key):
                out.append(f"components.{kind} key {key!r} does not match {COMPONENT_KEY.pattern}")
    for name, message in (components.get("messages") or {}).items():
        out += _message(doc, message, f"components.messages.{name}")
    for name, schema in (components.get("schemas") or {}).items():
        out += schema_problems(schema, f"components.schemas.{name}")
    return out


def resolve(doc: dict[str, Any], ref: str) -> Any:
    """The node a local ``$ref`` (``#/a/b``) points at, or None."""
    if not ref.startswith("#/"):
        return None
    node: Any = doc
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def deref(doc: dict[str, Any], node: Any) -> Any:
    """``node``, or what its ``$ref`` points at."""
    seen = 0
    while isinstance(node, dict) and "$ref" in node and seen < 32:
        node = resolve(doc, node["$ref"])
        seen += 1
    return node


def _channel(doc: dict[str, Any], name: str, channel: dict[str, Any]) -> list[str]:
    where = f"channels.{name}"
    out = _fields("channel", channel, where)
    address = channel.get("address")
    if address is not None and not isinstance(address, str):
        out.append(f"{where}.address is neither a string nor null")
    if isinstance(address, str):
        declared = set((channel.get("parameters") or {}).keys())
        for parameter in re.findall(r"\{([^}]*)\}", address):
            if parameter not in declared:
                out.append(f"{where}: address parameter {{{parameter}}} is not in parameters")
    messages = channel.get("messages", {})
    if not isinstance(messages, dict):
        return [*out, f"{where}.messages is not an object"]
    for key, message in messages.items():
        target = deref(doc, message)
        if not isinstance(target, dict):
            out.append(f"{where}.messages.{key} is not a message")
            continue
        out += _message(doc, target, f"{where}.messages.{key}")
    return out


def _operation(doc: dict[str, Any], name: str, operation: dict[str, Any]) -> list[str]:
    where = f"operations.{name}"
    out = _fields("operation", operation, where)
    if operation.get("action") not in ("send", "receive"):
        out.append(f"{where}.action is {operation.get('action')!r}, not send or receive")
    channel_ref = (operation.get("channel") or {}).get("$ref")
    if not isinstance(channel_ref, str) or not channel_ref.startswith("#/channels/"):
        out.append(f"{where}.channel is not a $ref to #/channels/...")
        return out
    channel = resolve(doc, channel_ref)
    if not isinstance(channel, dict):
        out.append(f"{where}.channel {channel_ref!r} is no channel")
        return out
    for i, message in enumerate(operation.get("messages", [])):
        ref = message.get("$ref") if isinstance(message, dict) else None
        # The spec: an operation's messages MUST be messages of its own channel.
        if not isinstance(ref, str) or not ref.startswith(channel_ref + "/messages/"):
            out.append(
                f"{where}.messages[{i}] {ref!r} is not a message of its channel {channel_ref}"
            )
        elif resolve(doc, ref) is None:
            out.append(f"{where}.messages[{i}] {ref!r} points at nothing")
    return out


def _message(doc: dict[str, Any], message: dict[str, Any], where: str) -> list[str]:
    out = _fields("message", message, where)
    content_type = message.get("contentType")
    if content_type is not None and (not isinstance(content_type, str) or "/" not in content_type):
        out.append(f"{where}.contentType {content_type!r} is not a media type")
    headers = deref(doc, message.get("headers"))
    if headers is not None and (not isinstance(headers, dict) or headers.get("type") != "object"):
        out.append(f"{where}.headers is not a schema of type object")
    if "payload" in message:
        out += schema_problems(message["payload"], f"{where}.payload")
    return out


def schema_problems(schema: Any, where: str) -> list[str]:
    """JSON Schema (draft 07) consistency of ``schema`` and every schema inside it."""
    if isinstance(schema, bool):
        return []
    if not isinstance(schema, dict):
        return [f"{where} is not a schema"]
    out: list[str] = []
    kind = schema.get("type")
    kinds = kind if isinstance(kind, list) else [kind] if kind is not None else []
    for item in kinds:
        if item not in JSON_TYPES:
            out.append(f"{where}.type {item!r} is not a JSON type")
    properties = schema.get("properties", {})
    if not isinstance(properties, dict):
        out.append(f"{where}.properties is not an object")
        properties = {}
    required = schema.get("required", [])
    if not isinstance(required, list) or len(set(required)) != len(required):
        out.append(f"{where}.required is not a list of distinct names")
    else:
        for name in required:
            if name not in properties:
                out.append(f"{where}.required names {name!r}, which is not a property")
    if "enum" in schema and (not isinstance(schema["enum"], list) or not schema["enum"]):
        out.append(f"{where}.enum is not a non-empty list")
    for name, sub in properties.items():
        out += schema_problems(sub, f"{where}.properties.{name}")
    items = schema.get("items")
    if isinstance(items, list):
        for i, sub in enumerate(items):
            out += schema_problems(sub, f"{where}.items[{i}]")
    elif items is not None:
        out += schema_problems(items, f"{where}.items")
    for key in ("additionalProperties", "additionalItems", "propertyNames", "not"):
        if key in schema:
            out += schema_problems(schema[key], f"{where}.{key}")
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            if not isinstance(schema[key], list) or not schema[key]:
                out.append(f"{where}.{key} is not a non-empty list")
                continue
            for i, sub in enumerate(schema[key]):
                out += schema_problems(sub, f"{where}.{key}[{i}]")
    return out


def _fields(kind: str, obj: Any, where: str) -> list[str]:
    if not isinstance(obj, dict):
        return [f"{where or 'the document'} is not an object"]
    out = []
    for key in obj:
        if key not in _FIELDS[kind] and not EXTENSION.match(key) and key != "$ref":
            out.append(f"{where or 'the document'} has {key!r}, no field of a {kind} object")
    for key in sorted(_REQUIRED.get(kind, set()) - set(obj)):
        out.append(f"{where or 'the document'} lacks the required {key!r}")
    return out


def _mapping(doc: dict[str, Any], key: str, out: list[str]) -> Iterator[tuple[str, Any]]:
    value = doc.get(key, {})
    if not isinstance(value, dict):
        out.append(f"{key} is not an object")
        return
    for name, item in value.items():
        if not isinstance(item, dict):
            out.append(f"{key}.{name} is not an object")
            continue
        yield name, item


def _refs(node: Any, where: str) -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            yield ref, where
        for key, value in node.items():
            if key != "$ref":
                yield from _refs(value, f"{where}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _refs(value, f"{where}/{i}")
