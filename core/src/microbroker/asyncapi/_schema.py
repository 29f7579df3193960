"""JSON Schemas of payload types: dataclasses, TypedDicts, enums, pydantic models, protobuf.

Named types (dataclasses, TypedDicts, NamedTuples, enums, pydantic models,
protobuf messages and enums) become entries of ``components/schemas`` and are
referred to with ``$ref``, so that a type used in several places, or in itself,
is written once. Everything else is written inline.

The schemas are JSON Schema draft 07, the dialect AsyncAPI 3.0's default
schema format extends; keys that JSON Schema does not define start with
``x-``, as AsyncAPI allows.
"""

from __future__ import annotations

import collections.abc
import copy
import dataclasses
import datetime
import decimal
import enum
import inspect
import ipaddress
import pathlib
import re
import types
import typing
import uuid
from typing import Any

Schema = dict[str, Any]

_REF_PREFIX = "#/components/schemas/"
# Component names as AsyncAPI 3.0 allows them (and JSON pointers need no escaping).
_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]+")

# Types written as strings by JSON encoders (pydantic's, and the JSON codec's
# encoding of these types): a ``format`` says which string.
_STRING_FORMATS: dict[type, Schema] = {
    datetime.datetime: {"type": "string", "format": "date-time"},
    datetime.date: {"type": "string", "format": "date"},
    datetime.time: {"type": "string", "format": "time"},
    datetime.timedelta: {"type": "string", "format": "duration"},
    uuid.UUID: {"type": "string", "format": "uuid"},
    decimal.Decimal: {"type": "string", "format": "decimal"},
    ipaddress.IPv4Address: {"type": "string", "format": "ipv4"},
    ipaddress.IPv6Address: {"type": "string", "format": "ipv6"},
    pathlib.PurePath: {"type": "string", "format": "path"},
}

_SCALARS: dict[type, Schema] = {
    bool: {"type": "boolean"},
    int: {"type": "integer"},
    float: {"type": "number"},
    str: {"type": "string"},
    bytes: {"type": "string", "contentEncoding": "base64"},
    bytearray: {"type": "string", "contentEncoding": "base64"},
}

# Protobuf field types (FieldDescriptor.TYPE_*) -> (proto type name, JSON Schema).
_PROTO_SCALARS: dict[int, tuple[str, Schema]] = {
    1: ("double", {"type": "number", "format": "double"}),
    2: ("float", {"type": "number", "format": "float"}),
    3: ("int64", {"type": "integer", "format": "int64"}),
    4: ("uint64", {"type": "integer", "format": "uint64", "minimum": 0}),
    5: ("int32", {"type": "integer", "format": "int32"}),
    6: ("fixed64", {"type": "integer", "format": "uint64", "minimum": 0}),
    7: ("fixed32", {"type": "integer", "format": "uint32", "minimum": 0}),
    8: ("bool", {"type": "boolean"}),
    9: ("string", {"type": "string"}),
    12: ("bytes", {"type": "string", "contentEncoding": "base64"}),
    13: ("uint32", {"type": "integer", "format": "uint32", "minimum": 0}),
    15: ("sfixed32", {"type": "integer", "format": "int32"}),
    16: ("sfixed64", {"type": "integer", "format": "int64"}),
    17: ("sint32", {"type": "integer", "format": "int32"}),
    18: ("sint64", {"type": "integer", "format": "int64"}),
}
# Qualifiers around a field's type that say nothing about its values.
_WRAPPERS: tuple[Any, ...] = tuple(
    wrapper
    for wrapper in (
        typing.ClassVar,
        typing.Final,
        typing.Required,
        typing.NotRequired,
        getattr(typing, "ReadOnly", None),  # 3.13
    )
    if wrapper is not None
)

_PROTO_GROUP, _PROTO_MESSAGE, _PROTO_ENUM = 10, 11, 14
_LABEL_REQUIRED, _LABEL_REPEATED = 2, 3

# Protobuf's well-known types, as their JSON mapping writes them.
_PROTO_WELL_KNOWN: dict[str, Schema] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?s$"},
    "google.protobuf.FieldMask": {"type": "string"},
    "google.protobuf.Struct": {"type": "object"},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array"},
    "google.protobuf.Empty": {"type": "object", "additionalProperties": False},
    "google.protobuf.Any": {
        "type": "object",
        "properties": {"@type": {"type": "string"}},
        "required": ["@type"],
    },
    "google.protobuf.DoubleValue": {"type": "number", "format": "double"},
    "google.protobuf.FloatValue": {"type": "number", "format": "float"},
    "google.protobuf.Int64Value": {"type": "integer", "format": "int64"},
    "google.protobuf.UInt64Value": {"type": "integer", "format": "uint64", "minimum": 0},
    "google.protobuf.Int32Value": {"type": "integer", "format": "int32"},
    "google.protobuf.UInt32Value": {"type": "integer", "format": "uint32", "minimum": 0},
    "google.protobuf.BoolValue": {"type": "boolean"},
    "google.protobuf.StringValue": {"type": "string"},
    "google.protobuf.BytesValue": {"type": "string", "contentEncoding": "base64"},
}


def ref(name: str) -> Schema:
    """A ``$ref`` to the component schema ``name``."""
    return {"$ref": _REF_PREFIX + name}


def is_protobuf_message_type(tp: Any) -> bool:
    """Whether ``tp`` is a protobuf message class (judged by its descriptor, not by import)."""
    descriptor = getattr(tp, "DESCRIPTOR", None)
    return isinstance(tp, type) and hasattr(descriptor, "fields") and hasattr(tp, "FromString")


def is_pydantic_model(tp: Any) -> bool:
    """Whether ``tp`` is a pydantic (v2) model class; pydantic itself is not imported."""
    return isinstance(tp, type) and callable(getattr(tp, "model_json_schema", None))


class Schemas:
    """Derives JSON Schemas and collects the named ones, for ``components/schemas``.

    >>> schemas = Schemas()
    >>> schemas.of(list[int])
    {'type': 'array', 'items': {'type': 'integer'}}
    """

    def __init__(self) -> None:
        #: Component name -> schema, in the order the types were met.
        self.components: dict[str, Schema] = {}
        # Named type (or protobuf full name) -> its component name.
        self._names: dict[Any, str] = {}

    # The public entry point ---------------------------------------------------------

    def of(self, tp: Any) -> Schema:
        """The schema of values of ``tp``: inline, or a ``$ref`` for a named type."""
        if tp is Any or tp is object or tp is inspect.Parameter.empty:
            return {}
        if tp is None or tp is type(None):
            return {"type": "null"}
        if isinstance(tp, typing.NewType):
            return self.of(tp.__supertype__)
        if isinstance(tp, typing.TypeVar):
            return self.of(tp.__bound__) if tp.__bound__ is not None else {}
        if isinstance(tp, str | typing.ForwardRef):
            # An annotation that was never resolved: say what it was rather than guess.
            name = tp if isinstance(tp, str) else tp.__forward_arg__
            return {"x-python-type": name}
        origin = typing.get_origin(tp)
        if origin is not None:
            return self._generic(tp, origin, typing.get_args(tp))
        if isinstance(tp, type):
            return self._class(tp)
        return {"x-python-type": repr(tp)}

    # Generic aliases: list[int], int | None, Literal["a"], Annotated[...] -------------

    def _generic(self, tp: Any, origin: Any, args: tuple[Any, ...]) -> Schema:
        if origin is typing.Annotated:
            return self.of(args[0])
        if origin is typing.Literal:
            return _enum_schema(list(args))
        if origin is typing.Union or origin is types.UnionType:
            return self._union(args)
        if origin in _WRAPPERS:
            return self.of(args[0]) if args else {}
        if isinstance(origin, type):
            if issubclass(origin, tuple) and not _is_namedtuple(origin):
                return self._tuple(args)
            if issubclass(origin, collections.abc.Mapping):
                return self._mapping(args)
            if issubclass(origin, collections.abc.Set):
                schema = self._array(args[0] if args else Any)
                schema["uniqueItems"] = True
                return schema
            if issubclass(origin, collections.abc.Iterable) and not issubclass(
                origin, str | bytes | bytearray
            ):
                return self._array(args[0] if args else Any)
            # A parametrised class of our own (a generic dataclass, Box[int]): its schema.
            return self._class(origin)
        return {"x-python-type": repr(tp)}

    def _union(self, args: tuple[Any, ...]) -> Schema:
        nullable = type(None) in args
        rest = [arg for arg in args if arg is not type(None)]
        if not rest:
            return {"type": "null"}
        schema = self.of(rest[0]) if len(rest) == 1 else {"anyOf": [self.of(a) for a in rest]}
        if not nullable:
            return schema
        kind = schema.get("type")
        if isinstance(kind, str) and "$ref" not in schema and "enum" not in schema:
            return {**schema, "type": [kind, "null"]}
        if "anyOf" in schema and len(schema) == 1:
            return {"anyOf": [*schema["anyOf"], {"type": "null"}]}
        return {"anyOf": [schema, {"type": "null"}]}

    def _array(self, item: Any) -> Schema:
        return {"type": "array", "items": self.of(item)}

    def _tuple(self, args: tuple[Any, ...]) -> Schema:
        if not args:
            return {"type": "array"}
        if len(args) == 2 and args[1] is Ellipsis:
            return self._array(args[0])
        if args == ((),):  # tuple[()]
            return {"type": "array", "maxItems": 0}
        # Draft 07's form of a fixed tuple (2020-12 would say prefixItems).
        return {
            "type": "array",
            "items": [self.of(arg) for arg in args],
            "minItems": len(args),
            "maxItems": len(args),
            "additionalItems": False,
        }

    def _mapping(self, args: tuple[Any, ...]) -> Schema:
        schema: Schema = {"type": "object"}
        if len(args) == 2:
            schema["additionalProperties"] = self.of(args[1])
            keys = self.of(args[0])
            named = keys
            if "$ref" in keys:
                named = self.components.get(keys["$ref"][len(_REF_PREFIX) :], {})
            # Keys of a string enum (or Literal): name the allowed ones. JSON object keys are
            # strings, so the keys of an int enum cannot be described this way.
            if "enum" in named and named.get("type") == "string":
                schema["propertyNames"] = keys
        return schema

    # Classes ----------------------------------------------------------------------

    def _class(self, tp: type) -> Schema:
        if is_protobuf_message_type(tp):
            return self._proto_message(getattr(tp, "DESCRIPTOR"))  # noqa: B009 - for mypy
        if is_pydantic_model(tp):
            return self._pydantic(tp)
        if issubclass(tp, enum.Enum):
            return self._named(tp, lambda: self._enum(tp))
        if dataclasses.is_dataclass(tp):
            return self._named(tp, lambda: self._dataclass(tp))
        if typing.is_typeddict(tp):
            return self._named(tp, lambda: self._typeddict(tp))
        if _is_namedtuple(tp):
            return self._named(tp, lambda: self._namedtuple(tp))
        for base, schema in _SCALARS.items():  # bool before int: bool is an int
            if issubclass(tp, base):
                return dict(schema)
        for base, schema in _STRING_FORMATS.items():
            if issubclass(tp, base):
                return dict(schema)
        if issubclass(tp, collections.abc.Mapping):
            return {"type": "object"}
        if issubclass(tp, list | tuple | collections.abc.Set):
            return {"type": "array"}
        return {"x-python-type": _qualified(tp)}

    def _named(self, key: Any, build: typing.Callable[[], Schema], name: str = "") -> Schema:
        """A ``$ref`` to ``key``'s component, built on first use (recursion-safe)."""
        existing = self._names.get(key)
        if existing is not None:
            return ref(existing)
        name = name or _component_name(key)
        if name in self.components and isinstance(key, type):
            # Two types of one name (shop.Order, billing.Order): the second says where it is from.
            name = _UNSAFE.sub("_", _qualified(key).replace(".<locals>.", "."))
        name = self._unique(name)
        self._names[key] = name
        # Reserved before it is built: a type that refers to itself finds its name.
        self.components[name] = {}
        self.components[name] = build()
        return ref(name)

    def _unique(self, name: str) -> str:
        if name not in self.components:
            return name
        for n in range(2, 10_000):
            candidate = f"{name}_{n}"
            if candidate not in self.components:
                return candidate
        raise RuntimeError(f"too many schemas named {name!r}")  # pragma: no cover

    def _dataclass(self, tp: type) -> Schema:
        hints = _hints(tp)
        properties: dict[str, Schema] = {}
        required: list[str] = []
        for field in dataclasses.fields(tp):
            schema = self.of(hints.get(field.name, Any))
            description = field.metadata.get("description") if field.metadata else None
            if isinstance(description, str):
                schema = _described(schema, description)
            if field.default is not dataclasses.MISSING:
                default = _json_default(field.default)
                if default is not _NO_DEFAULT:
                    schema = {**schema, "default": default} if "$ref" not in schema else schema
            elif field.default_factory is dataclasses.MISSING and field.init:
                required.append(field.name)
            properties[field.name] = schema
        return _object(tp, properties, required)

    def _typeddict(self, tp: type) -> Schema:
        hints = _hints(tp, extras=True)
        required_keys: frozenset[str] = getattr(tp, "__required_keys__", frozenset(hints))
        properties = {name: self.of(hint) for name, hint in hints.items()}
        required = []
        for name, hint in hints.items():
            # Read Required[]/NotRequired[] from the hints too: under
            # ``from __future__ import annotations`` 3.11 cannot see them when it makes
            # the class, and counts every key of a total TypedDict as required.
            origin = typing.get_origin(hint)
            if origin is typing.NotRequired:
                continue
            if origin is typing.Required or name in required_keys:
                required.append(name)
        return _object(tp, properties, required)

    def _namedtuple(self, tp: type) -> Schema:
        # A NamedTuple is a tuple: JSON writes it as an array, its fields in order.
        hints = _hints(tp)
        fields: tuple[str, ...] = getattr(tp, "_fields", ())
        schema = self._tuple(tuple(hints.get(name, Any) for name in fields))
        schema["title"] = tp.__name__
        schema["x-fields"] = list(fields)
        doc = _docstring(tp)
        if doc:
            schema["description"] = doc
        return schema

    def _enum(self, tp: type[enum.Enum]) -> Schema:
        schema = _enum_schema([member.value for member in tp])
        schema["title"] = tp.__name__
        schema["x-enum-names"] = [member.name for member in tp]
        doc = _docstring(tp)
        if doc:
            schema["description"] = doc
        return schema

    # pydantic -------------------------------------------------------------------------

    def _pydantic(self, tp: type) -> Schema:
        existing = self._names.get(tp)
        if existing is not None:
            return ref(existing)
        # The schema of the JSON that model_dump_json() writes (what the JSON codec sends).
        generated: Schema = tp.model_json_schema(mode="serialization")  # type: ignore[attr-defined]
        definitions: dict[str, Schema] = generated.pop("$defs", {})
        # pydantic names the models a model uses in $defs; they become components too. A
        # model met before (through another model) is the same schema again: reuse it.
        renames = {local: _UNSAFE.sub("_", local) for local in definitions}
        for local, definition in definitions.items():
            name = renames[local]
            if self.components.get(name) != _rewrite_refs(definition, renames):
                renames[local] = self._unique(name)
        for local, definition in definitions.items():
            self.components[renames[local]] = _rewrite_refs(definition, renames)
        target = generated.get("$ref")
        if len(generated) == 1 and isinstance(target, str) and target.startswith("#/$defs/"):
            # A recursive model: pydantic writes it in $defs and refers to it from the top.
            name = renames[target[len("#/$defs/") :]]
        else:
            name = _UNSAFE.sub("_", tp.__name__)
            schema = _rewrite_refs(generated, renames)
            if self.components.get(name) != schema:
                name = self._unique(name)
                self.components[name] = schema
        self._names[tp] = name
        return ref(name)

    # protobuf -------------------------------------------------------------------------

    def _proto_message(self, descriptor: Any) -> Schema:
        full_name: str = descriptor.full_name
        if full_name in _PROTO_WELL_KNOWN:
            return {**copy.deepcopy(_PROTO_WELL_KNOWN[full_name]), "x-protobuf-type": full_name}
        return self._named(
            ("protobuf", full_name), lambda: self._proto_fields(descriptor), full_name
        )

    def _proto_fields(self, descriptor: Any) -> Schema:
        properties: dict[str, Schema] = {}
        required: list[str] = []
        for field in descriptor.fields:
            schema = self._proto_field(field)
            if "$ref" in schema:
                # Draft 07 gives a $ref no siblings: wrap it to say more about the field.
                schema = {"allOf": [schema]}
            schema["x-protobuf-number"] = field.number
            if field.json_name and field.json_name != field.name:
                schema["x-protobuf-json-name"] = field.json_name
            oneof = field.containing_oneof
            if oneof is not None and not _synthetic_oneof(oneof):
                schema["x-protobuf-oneof"] = oneof.name
            if _label(field) == _LABEL_REQUIRED:
                required.append(field.name)
            properties[field.name] = schema
        schema = {"type": "object", "title": descriptor.name, "properties": properties}
        if required:
            schema["required"] = required
        schema["x-protobuf-message"] = descriptor.full_name
        return schema

    def _proto_field(self, field: Any) -> Schema:
        message_type = field.message_type
        if message_type is not None and message_type.GetOptions().map_entry:
            key, value = message_type.fields_by_name["key"], message_type.fields_by_name["value"]
            schema = {"type": "object", "additionalProperties": self._proto_value(value)}
            schema["x-protobuf-map-key"] = self._proto_type_name(key)
            return schema
        item = self._proto_value(field)
        if _label(field) == _LABEL_REPEATED:
            return {"type": "array", "items": item}
        return item

    def _proto_value(self, field: Any) -> Schema:
        """The schema of one value of ``field`` (an element, for a repeated field)."""
        if field.type in (_PROTO_MESSAGE, _PROTO_GROUP):
            return self._proto_message(field.message_type)
        if field.type == _PROTO_ENUM:
            enum_type = field.enum_type
            return self._named(
                ("protobuf", enum_type.full_name),
                lambda: _proto_enum(enum_type),
                enum_type.full_name,
            )
        name, schema = _PROTO_SCALARS[field.type]
        return {**schema, "x-protobuf-type": name}

    def _proto_type_name(self, field: Any) -> str:
        if field.type == _PROTO_ENUM:
            return str(field.enum_type.full_name)
        if field.type in (_PROTO_MESSAGE, _PROTO_GROUP):
            return str(field.message_type.full_name)
        return _PROTO_SCALARS[field.type][0]


# Helpers -------------------------------------------------------------------------------

_NO_DEFAULT = object()


def _json_default(value: Any) -> Any:
    """``value`` as JSON, when it is plain JSON data; otherwise no default is written."""
    if isinstance(value, enum.Enum):
        value = value.value
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return _NO_DEFAULT


def _described(schema: Schema, description: str) -> Schema:
    if "$ref" in schema:
        # Draft 07 ignores siblings of $ref: wrap it to keep the description.
        return {"allOf": [schema], "description": description}
    return {**schema, "description": description}


def _object(tp: type, properties: dict[str, Schema], required: list[str]) -> Schema:
    schema: Schema = {"type": "object", "title": tp.__name__, "properties": properties}
    if required:
        schema["required"] = required
    doc = _docstring(tp)
    if doc:
        schema["description"] = doc
    return schema


def _enum_schema(values: list[Any]) -> Schema:
    plain = [value.value if isinstance(value, enum.Enum) else value for value in values]
    schema: Schema = {}
    kinds = {_json_type(value) for value in plain}
    if len(kinds) == 1 and None not in kinds:
        schema["type"] = kinds.pop()
    schema["enum"] = plain
    return schema


def _json_type(value: Any) -> str | None:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "null"
    return None


def _proto_enum(descriptor: Any) -> Schema:
    # The JSON mapping writes enum values by name; the binary encoding, by number.
    return {
        "type": "string",
        "title": descriptor.name,
        "enum": [value.name for value in descriptor.values],
        "x-protobuf-enum": descriptor.full_name,
        "x-protobuf-enum-numbers": {value.name: value.number for value in descriptor.values},
    }


def _label(field: Any) -> int:
    # protobuf 6 deprecates ``label`` in favour of is_repeated / is_required.
    if hasattr(field, "is_repeated"):
        if field.is_repeated:
            return _LABEL_REPEATED
        return _LABEL_REQUIRED if getattr(field, "is_required", False) else 1
    return int(field.label)


def _synthetic_oneof(oneof: Any) -> bool:
    """A proto3 ``optional`` field's oneof, which is no real choice between fields."""
    synthetic = getattr(oneof, "is_synthetic", None)
    if synthetic is not None:
        return bool(synthetic)
    return len(oneof.fields) == 1 and oneof.name == "_" + oneof.fields[0].name


def _rewrite_refs(schema: Any, renames: dict[str, str]) -> Any:
    """pydantic's ``#/$defs/X`` references, pointed at the components they became."""
    if isinstance(schema, dict):
        out = {}
        for key, value in schema.items():
            if key == "$ref" and isinstance(value, str) and value.startswith("#/$defs/"):
                local = value[len("#/$defs/") :]
                out[key] = _REF_PREFIX + renames.get(local, local)
            else:
                out[key] = _rewrite_refs(value, renames)
        return out
    if isinstance(schema, list):
        return [_rewrite_refs(item, renames) for item in schema]
    return schema


def _hints(tp: type, *, extras: bool = False) -> dict[str, Any]:
    try:
        return typing.get_type_hints(tp, include_extras=extras)
    except Exception:
        # An annotation that does not resolve (a name imported under TYPE_CHECKING only):
        # keep the others; the unresolved one is described by its text.
        return dict(getattr(tp, "__annotations__", {}))


def _is_namedtuple(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, tuple) and hasattr(tp, "_fields")


def _docstring(tp: type) -> str | None:
    doc = tp.__doc__
    if not doc:
        return None
    # A dataclass without a docstring gets its signature as one; Enum and NamedTuple
    # classes inherit stock text. Neither says anything about this type.
    if doc.startswith(tp.__name__ + "(") or doc in (
        enum.Enum.__doc__,
        getattr(typing.NamedTuple, "__doc__", None),
        "An enumeration.",
    ):
        return None
    if any(doc == getattr(base, "__doc__", None) for base in tp.__mro__[1:]):
        return None
    return inspect.cleandoc(doc)


def _qualified(tp: type) -> str:
    return f"{tp.__module__}.{tp.__qualname__}"


def _component_name(key: Any) -> str:
    if isinstance(key, type):
        return _UNSAFE.sub("_", key.__name__)
    return _UNSAFE.sub("_", str(key))
