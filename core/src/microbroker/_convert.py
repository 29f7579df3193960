"""Typed JSON payloads: JSON values converted into annotated types, and values into JSON.

:func:`decode` parses a JSON body and converts it into the annotated type,
validating as it goes: dataclasses (nested, generic), TypedDict, NamedTuple,
pydantic models (when pydantic is installed; pydantic validates them),
protobuf messages, ``list``/``dict``/``tuple``/``set`` and their ``typing``
and ``collections.abc`` spellings, unions and ``Optional``, ``Literal``,
enums, ``datetime``/``date``/``time`` (ISO 8601 strings), ``UUID``,
``Decimal`` and ``bytes`` (base64), ``Annotated`` and ``NewType``. A value
that does not fit raises :class:`~microbroker.codecs.ConversionError` naming
its place (``items[2].price: expected a number, got 'abc'``).

The converter of a type is compiled once (dataclasses and TypedDicts into a
function of their own, as ``dataclasses`` writes ``__init__``) and cached, so
that a message costs about what building the object by hand costs. Values of
JSON's own types pass through without a copy when they fit (``list[int]``
returns the parsed list).

:func:`encode` is the other direction, through the json module's C encoder:
what it cannot write (a dataclass, a datetime...) it hands to one function
per type, also cached. The encoding follows the value's type, so that
``decode(encode(v), type(v)) == v``.

The rules are strict, as JSON carries types: an ``int`` field takes an
integer (not ``"5"``, ``5.0`` or ``true``), a ``float`` field takes any
number, ``str`` only a string. Unknown fields are ignored (a newer publisher
must not break an older subscriber); a missing field takes its default or is
an error. A union takes a value of a JSON type one of its members has as is
(``int | str`` keeps ``"5"`` a string), and otherwise tries its members in order.
"""

from __future__ import annotations

import base64
import binascii
import collections.abc as abc
import dataclasses
import datetime as dt
import decimal
import enum
import itertools
import json
import json.scanner
import linecache
import math
import re
import threading
import types
import typing
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message as ProtoMessage

from ._errors import ConversionError

Convert = Callable[[Any], Any]

_NoneType = type(None)


class _Missing:
    """The value of a field absent from the JSON object."""

    def __repr__(self) -> str:
        return "<missing>"


_MISSING: Any = _Missing()

# Caches are keyed by types, which come from code, not from the wire; the bound only keeps a
# program that makes types at run time (make_dataclass in a loop) from growing them forever.
_CACHE_LIMIT = 4096


class _Compiled:
    """The converter of one type, built once."""

    __slots__ = ("convert", "exact", "what")

    def __init__(self, convert: Convert, exact: frozenset[type] | None, what: str) -> None:
        #: JSON value -> value of the type; raises ConversionError.
        self.convert = convert
        #: Types of JSON values that ``convert`` returns unchanged, so that callers test
        #: ``type(v) in exact`` and skip the call; ``None`` when every value is (``Any``).
        self.exact = exact
        #: What a fitting JSON value is, for messages: "an integer", "an object for Order".
        self.what = what


def _got(value: Any) -> str:
    """A JSON value as an error message shows it: short, and in JSON's words."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _mismatch(what: str, value: Any) -> ConversionError:
    error = ConversionError(f"expected {what}, got {_got(value)}")
    error._wrong_kind = True
    return error


def _missing(name: str) -> ConversionError:
    return ConversionError("missing required field", (name,))


# Scalars -----------------------------------------------------------------------------------


def _exact_type(kind: type, what: str) -> _Compiled:
    def convert(value: Any) -> Any:
        if type(value) is kind:
            return value
        raise _mismatch(what, value)

    return _Compiled(convert, frozenset({kind}), what)


def _to_float(value: Any) -> float:
    if type(value) is float:
        return value
    if type(value) is int:
        try:
            return float(value)
        except OverflowError:
            raise ConversionError(f"number too large for a float: {_got(value)}") from None
    raise _mismatch("a number", value)


def _from_string(parse: Callable[[str], Any], what: str) -> _Compiled:
    def convert(value: Any) -> Any:
        if type(value) is str:
            try:
                return parse(value)
            except (ValueError, ArithmeticError):
                pass
        raise _mismatch(what, value)

    return _Compiled(convert, frozenset(), what)


def _b64(value: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error as exc:
        raise ValueError(str(exc)) from None


def _to_decimal(value: Any) -> decimal.Decimal:
    kind = type(value)
    if kind is str:
        try:
            return decimal.Decimal(value)
        except decimal.InvalidOperation:
            pass
    elif kind is int:
        return decimal.Decimal(value)
    elif kind is float:
        # The float's shortest repr is the number the JSON text had: 0.1, not 0.1000000000000000055.
        return decimal.Decimal(repr(value))
    raise _mismatch("a decimal number (a number or a numeric string)", value)


def _identity(value: Any) -> Any:
    return value


_ANY = _Compiled(_identity, None, "any value")
_NONE = _exact_type(_NoneType, "null")

_SCALARS: dict[Any, _Compiled] = {
    int: _exact_type(int, "an integer"),
    str: _exact_type(str, "a string"),
    bool: _exact_type(bool, "true or false"),
    float: _Compiled(_to_float, frozenset({float}), "a number"),
    _NoneType: _NONE,
    None: _NONE,
    Any: _ANY,
    object: _ANY,
    bytes: _from_string(_b64, "a base64 string"),
    bytearray: _from_string(lambda text: bytearray(_b64(text)), "a base64 string"),
    dt.datetime: _from_string(dt.datetime.fromisoformat, "an ISO 8601 datetime"),
    dt.date: _from_string(dt.date.fromisoformat, "an ISO 8601 date"),
    dt.time: _from_string(dt.time.fromisoformat, "an ISO 8601 time"),
    uuid.UUID: _from_string(uuid.UUID, "a UUID"),
    decimal.Decimal: _Compiled(
        _to_decimal, frozenset(), "a decimal number (a number or a numeric string)"
    ),
}


# Compilation and its cache -----------------------------------------------------------------

_compiled_cache: dict[Any, _Compiled] = {}
# Types being compiled now, each with a stand-in that forwards to the finished converter:
# a recursive type (a tree of nodes) meets itself while its fields are compiled.
_building: dict[Any, _Compiled] = {}
# What the compilation under way has cached so far (see _compiled).
_fresh: list[Any] = []
_lock = threading.RLock()


def _compiled(tp: Any) -> _Compiled:
    """The converter of ``tp``, compiled on first use; TypeError for an unsupported type."""
    try:
        found = _compiled_cache.get(tp)
    except TypeError:  # an unhashable annotation (Literal[[1]]): build it each time
        return _build(tp)
    if found is not None:
        return found
    with _lock:
        found = _compiled_cache.get(tp) or _building.get(tp)
        if found is not None:
            return found
        target: list[Convert] = []

        def forward(value: Any) -> Any:
            return target[0](value)

        outermost = not _building
        _building[tp] = _Compiled(forward, frozenset(), _name(tp))
        try:
            built = _build(tp)
        except BaseException:
            # What was compiled meanwhile may forward to a stand-in that will never be
            # finished (a field of an unsupported type in a recursive dataclass): drop it.
            if outermost:
                for key in _fresh:
                    _compiled_cache.pop(key, None)
                _fresh.clear()
            raise
        finally:
            del _building[tp]
        target.append(built.convert)
        if len(_compiled_cache) >= _CACHE_LIMIT:
            _compiled_cache.clear()
        _compiled_cache[tp] = built
        if outermost:
            _fresh.clear()
        else:
            _fresh.append(tp)
        return built


def _name(tp: Any) -> str:
    return str(getattr(tp, "__qualname__", None) or tp)


def _build(tp: Any) -> _Compiled:
    scalar = _SCALARS.get(tp) if _hashable(tp) else None
    if scalar is not None:
        return scalar
    if isinstance(tp, typing.NewType):
        return _compiled(tp.__supertype__)
    if isinstance(tp, typing.TypeVar):
        return _compiled(_typevar_type(tp))
    alias_value = getattr(tp, "__value__", None)  # `type X = ...` (3.12)
    if alias_value is not None and type(tp).__name__ == "TypeAliasType":
        return _compiled(alias_value)
    if isinstance(tp, str | typing.ForwardRef):
        raise TypeError(f"cannot convert JSON into the unresolved annotation {tp!r}")
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Annotated:
        return _compiled(args[0])
    if origin in _QUALIFIERS:
        return _compiled(args[0])
    if origin is typing.Union or origin is types.UnionType:
        return _union(args)
    if origin is typing.Literal:
        return _literal(args)
    kind = origin if origin is not None else tp
    if kind in _SEQUENCES:
        return _sequence(_SEQUENCES[kind], args[0] if args else Any)
    if kind is tuple:
        if origin is not None and not args and tp is not typing.Tuple:  # noqa: UP006
            return _tuple(((),))  # tuple[()]: no parameters, as bare tuple has none either
        return _tuple(args)
    if kind in _MAPPINGS:
        return _mapping(args[0] if args else Any, args[1] if len(args) > 1 else Any)
    if not isinstance(kind, type):
        raise TypeError(f"cannot convert JSON into {tp!r}: unsupported annotation")
    if issubclass(kind, enum.Enum):
        return _enum(kind)
    if dataclasses.is_dataclass(kind):
        return _dataclass(kind, args)
    if typing.is_typeddict(kind):
        return _typeddict(kind, args)
    if issubclass(kind, tuple) and hasattr(kind, "_fields"):
        return _namedtuple(kind, args)
    if issubclass(kind, ProtoMessage):
        return _protobuf(kind)
    if _is_pydantic(kind):
        return _pydantic(kind)
    raise TypeError(
        f"cannot convert JSON into {_name(tp)}: not a dataclass, TypedDict, NamedTuple, "
        "pydantic model, protobuf message, enum or supported builtin"
    )


# Wrappers that say something about a field, not about its values.
_QUALIFIERS = {
    typing.Final,
    typing.ClassVar,
    typing.Required,
    typing.NotRequired,
    *filter(None, [getattr(typing, "ReadOnly", None)]),  # Python 3.13
}


def _hashable(tp: Any) -> bool:
    try:
        hash(tp)
    except TypeError:
        return False
    return True


def _typevar_type(var: Any) -> Any:
    """What an unbound TypeVar accepts: its bound, its constraints, or anything."""
    if var.__bound__ is not None:
        return var.__bound__
    if var.__constraints__:
        return typing.Union[var.__constraints__]  # noqa: UP007 - a tuple of types at run time
    return Any


def _is_pydantic(kind: type) -> bool:
    # Duck-typed: pydantic is optional and never imported here.
    return hasattr(kind, "model_validate") and hasattr(kind, "__pydantic_validator__")


# Unions, literals, enums -------------------------------------------------------------------


def _union(args: tuple[Any, ...]) -> _Compiled:
    members = [_compiled(arg) for arg in args]
    if any(member.exact is None for member in members):
        return _ANY
    exact = frozenset[type]().union(*(member.exact or () for member in members))
    what = " or ".join(member.what for member in members)

    def convert(value: Any) -> Any:
        if type(value) in exact:
            return value
        errors: list[ConversionError] = []
        for member in members:
            try:
                return member.convert(value)
            except ConversionError as exc:
                errors.append(exc)
        # The member that got furthest into the value tells what is wrong with it
        # (Optional[Item] with a bad price says so); when every member refused its kind,
        # one message lists them all.
        telling = [e for e in errors if e.location or not e._wrong_kind]
        if telling:
            raise max(telling, key=lambda e: len(e.location))
        raise _mismatch(what, value)

    return _Compiled(convert, exact, what)


def _json_key(value: Any) -> tuple[bool, Any]:
    # 1 == True in Python; JSON tells them apart.
    return (type(value) is bool, value)


def _literal(values: tuple[Any, ...]) -> _Compiled:
    table = {_json_key(v.value if isinstance(v, enum.Enum) else v): v for v in values}
    what = "one of " + ", ".join(_got(v.value if isinstance(v, enum.Enum) else v) for v in values)

    def convert(value: Any) -> Any:
        try:
            return table[_json_key(value)]
        except (KeyError, TypeError):  # TypeError: an object or an array, unhashable
            raise _mismatch(what, value) from None

    return _Compiled(convert, frozenset(), what)


def _enum(kind: type[enum.Enum]) -> _Compiled:
    members = list(kind)
    table = {_json_key(member.value): member for member in members}
    shown = ", ".join(_got(member.value) for member in members[:10])
    what = f"one of {shown}{', ...' if len(members) > 10 else ''} ({kind.__qualname__})"
    flag = issubclass(kind, enum.Flag)

    def convert(value: Any) -> Any:
        try:
            return table[_json_key(value)]
        except (KeyError, TypeError):
            pass
        if flag and type(value) is int:  # a combination of flags is no member of its own
            try:
                return kind(value)
            except ValueError:
                pass
        raise _mismatch(what, value)

    return _Compiled(convert, frozenset(), what)


# Containers --------------------------------------------------------------------------------

_SEQUENCES: dict[Any, Callable[[list[Any]], Any] | None] = {
    list: None,
    abc.Sequence: None,
    abc.MutableSequence: None,
    abc.Collection: None,
    abc.Iterable: None,
    set: set,
    abc.Set: frozenset,
    abc.MutableSet: set,
    frozenset: frozenset,
}
_MAPPINGS = {dict, abc.Mapping, abc.MutableMapping}


def _items(item: _Compiled, value: list[Any]) -> list[Any]:
    """``value``'s items converted; the list itself when every item is already of its type."""
    exact = item.exact
    if exact is None:
        return value
    for x in value:
        if type(x) not in exact:
            break
    else:
        return value
    convert = item.convert
    out = []
    for index, x in enumerate(value):
        if type(x) not in exact:
            try:
                x = convert(x)
            except ConversionError as exc:
                exc._at_item(index)
                raise
        out.append(x)
    return out


def _sequence(make: Callable[[list[Any]], Any] | None, item_type: Any) -> _Compiled:
    item = _compiled(item_type)
    what = "an array"

    def convert(value: Any) -> Any:
        if type(value) is not list:
            raise _mismatch(what, value)
        items = _items(item, value)
        if make is None:
            return items
        try:
            return make(items)
        except TypeError as exc:  # unhashable items for a set
            raise ConversionError(f"cannot make a set of these items: {exc}") from None

    return _Compiled(convert, frozenset(), what)


def _tuple(args: tuple[Any, ...]) -> _Compiled:
    if not args or (len(args) == 2 and args[1] is Ellipsis):
        return _sequence(tuple, args[0] if args else Any)
    if args == ((),):  # tuple[()]
        args = ()
    items = [_compiled(arg) for arg in args]
    size = len(items)
    what = f"an array of {size} item{'' if size == 1 else 's'}"

    def convert(value: Any) -> Any:
        if type(value) is not list:
            raise _mismatch(what, value)
        if len(value) != size:
            raise ConversionError(f"expected {what}, got {len(value)}")
        out = []
        for index, (item, x) in enumerate(zip(items, value, strict=True)):
            if item.exact is None or type(x) in item.exact:
                out.append(x)
                continue
            try:
                out.append(item.convert(x))
            except ConversionError as exc:
                exc._at_item(index)
                raise
        return tuple(out)

    return _Compiled(convert, frozenset(), what)


def _mapping(key_type: Any, value_type: Any) -> _Compiled:
    convert_key = _key_converter(key_type)
    item = _compiled(value_type)
    exact = item.exact
    convert_item = item.convert
    what = "an object"

    def convert(value: Any) -> Any:
        if type(value) is not dict:
            raise _mismatch(what, value)
        if convert_key is None:
            if exact is None:
                return value
            for x in value.values():
                if type(x) not in exact:
                    break
            else:
                return value
        out = {}
        for key, x in value.items():
            if convert_key is not None:
                try:
                    converted = convert_key(key)
                except ConversionError as exc:
                    error = ConversionError(f"invalid key: {exc.reason}")
                    error._at_item(key)
                    raise error from None
            else:
                converted = key
            if exact is not None and type(x) not in exact:
                try:
                    x = convert_item(x)
                except ConversionError as exc:
                    exc._at_item(key)
                    raise
            out[converted] = x
        return out

    return _Compiled(convert, frozenset(), what)


_INTEGER = re.compile(r"-?(?:0|[1-9][0-9]*)")


def _key_text(value: Any) -> str:
    """The JSON object key the json module writes for ``value`` (and :func:`encode` for the
    types it adds)."""
    if isinstance(value, enum.Enum):
        return _key_text(value.value)
    if isinstance(value, str):
        return str.__str__(value)
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return float.__repr__(value)
    encoded = _default(value)
    if isinstance(encoded, str):
        return encoded
    raise TypeError(f"keys must be str, int, float, bool or None, not {type(value).__qualname__}")


def _key_converter(tp: Any) -> Callable[[str], Any] | None:
    """Object key (a str) -> key of type ``tp``; None when the key stays the str it is."""
    while True:
        if isinstance(tp, typing.NewType):
            tp = tp.__supertype__
        elif typing.get_origin(tp) is typing.Annotated:
            tp = typing.get_args(tp)[0]
        else:
            break
    if tp in (str, Any, object):
        return None
    choices: Iterable[Any] | None = None
    if typing.get_origin(tp) is typing.Literal:
        choices = typing.get_args(tp)
    elif isinstance(tp, type) and issubclass(tp, enum.Enum):
        choices = list(tp)
    if choices is not None:
        table = {_key_text(choice): choice for choice in choices}
        what = "one of " + ", ".join(repr(text) for text in table)

        def from_table(key: str) -> Any:
            try:
                return table[key]
            except KeyError:
                raise _mismatch(what, key) from None

        return from_table
    if tp is int:

        def to_int(key: str) -> int:
            if _INTEGER.fullmatch(key):
                return int(key)
            raise _mismatch("an integer", key)

        return to_int
    if tp is float:

        def to_float(key: str) -> float:
            try:
                return float(key)
            except ValueError:
                raise _mismatch("a number", key) from None

        return to_float
    if tp is bool:
        booleans = {"true": True, "false": False}

        def to_bool(key: str) -> bool:
            try:
                return booleans[key]
            except KeyError:
                raise _mismatch("'true' or 'false'", key) from None

        return to_bool
    if tp in (uuid.UUID, dt.datetime, dt.date, dt.time, decimal.Decimal):
        return _SCALARS[tp].convert
    raise TypeError(f"dict keys of type {_name(tp)} cannot come from JSON object keys")


# Objects -----------------------------------------------------------------------------------


def _hints(kind: type, args: tuple[Any, ...], *, extras: bool = False) -> dict[str, Any]:
    """``kind``'s resolved annotations, with its type parameters replaced by ``args``."""
    try:
        hints = typing.get_type_hints(kind, include_extras=extras)
    except Exception as exc:  # a name the annotations use is not defined at module level
        raise TypeError(f"cannot resolve the annotations of {_name(kind)}: {exc}") from exc
    mapping: dict[Any, Any] = {}
    if args:
        mapping.update(zip(getattr(kind, "__parameters__", ()), args, strict=False))
    # Parameters fixed in a class statement: class IntBox(Box[int]).
    for klass in kind.__mro__:
        for base in getattr(klass, "__orig_bases__", ()):
            origin = typing.get_origin(base)
            if origin is None or origin is typing.Generic:
                continue
            for param, arg in zip(
                getattr(origin, "__parameters__", ()), typing.get_args(base), strict=False
            ):
                mapping.setdefault(param, _substitute(arg, mapping))
    if not mapping:
        return hints
    return {name: _substitute(hint, mapping) for name, hint in hints.items()}


def _substitute(tp: Any, mapping: dict[Any, Any]) -> Any:
    if isinstance(tp, typing.TypeVar):
        return mapping.get(tp, tp)
    params = getattr(tp, "__parameters__", None)
    if params and not isinstance(tp, type):
        return tp[tuple(mapping.get(p, p) for p in params)]
    return tp


class _Source:
    """The text and namespace of one generated converter."""

    def __init__(self, kind: type) -> None:
        self.lines: list[str] = []
        self.env: dict[str, Any] = {
            "_MISSING": _MISSING,
            "_Error": ConversionError,
            "_missing": _missing,
            "_cls": kind,
        }

    def add(self, indent: int, *lines: str) -> None:
        self.lines.extend("    " * indent + line for line in lines)

    def field(self, index: int, name: str, item: _Compiled, default: str | None) -> None:
        """Read field ``name`` of ``v`` into ``x<index>``, converted (``default``: an
        expression for an absent field; None: the field is required; "": leave it absent)."""
        x = f"x{index}"
        key = repr(name)
        self.env[f"_c{index}"] = item.convert
        self.add(1, f"{x} = v.get({key}, _MISSING)")
        if default == "":
            self.add(1, f"if {x} is not _MISSING:")
            body = 2
            if item.exact is not None:
                body = self._check(2, index, item.exact)
                self._convert(body, x, index, key)
            self.add(2, f"r[{key}] = {x}")
            return
        on_missing = f"{x} = {default}" if default is not None else f"raise _missing({key})"
        if item.exact is None:
            self.add(1, f"if {x} is _MISSING:", f"    {on_missing}")
            return
        body = self._check(1, index, item.exact)
        self.add(body, f"if {x} is _MISSING:", f"    {on_missing}", "else:")
        self._convert(body + 1, x, index, key)

    def _check(self, indent: int, index: int, exact: frozenset[type]) -> int:
        """Open ``if <not of an exact type>:`` (nothing to test when no type is exact)."""
        x = f"x{index}"
        if not exact:
            return indent
        if len(exact) == 1:
            self.env[f"_t{index}"] = next(iter(exact))
            self.add(indent, f"if type({x}) is not _t{index}:")
        else:
            self.env[f"_e{index}"] = exact
            self.add(indent, f"if type({x}) not in _e{index}:")
        return indent + 1

    def _convert(self, indent: int, x: str, index: int, key: str) -> None:
        self.add(
            indent,
            "try:",
            f"    {x} = _c{index}({x})",
            "except _Error as exc:",
            f"    exc._at_field({key})",
            "    raise",
        )

    def compile(self, kind: type) -> Convert:
        convert: Convert = _define(
            "\n".join(self.lines), self.env, f"converter of {kind.__module__}.{kind.__qualname__}"
        )
        return convert


def _define(text: str, env: dict[str, Any], title: str) -> Any:
    """The function that ``text`` defines, with its source where tracebacks look for it."""
    filename = f"<microbroker {title} {next(_sources)}>"
    namespace: dict[str, Any] = {}
    exec(compile(text, filename, "exec"), env, namespace)  # our own text
    linecache.cache[filename] = (len(text), None, text.splitlines(keepends=True), filename)
    (function,) = namespace.values()
    return function


_sources = itertools.count()


def _dataclass(kind: type, args: tuple[Any, ...]) -> _Compiled:
    hints = _hints(kind, args)
    what = f"an object for {kind.__qualname__}"
    source = _Source(kind)
    source.env["_not_object"] = lambda value: _mismatch(what, value)
    source.env["_invalid"] = lambda exc: ConversionError(f"invalid {kind.__qualname__}: {exc}")
    source.add(0, "def convert(v):", "    if type(v) is not dict:", "        raise _not_object(v)")
    call = []
    for index, field in enumerate(f for f in dataclasses.fields(kind) if f.init):
        default: str | None = None
        if field.default is not dataclasses.MISSING:
            source.env[f"_d{index}"] = field.default
            default = f"_d{index}"
        elif field.default_factory is not dataclasses.MISSING:
            source.env[f"_f{index}"] = field.default_factory
            default = f"_f{index}()"
        source.field(index, field.name, _compiled(hints.get(field.name, Any)), default)
        call.append(f"{field.name}=x{index}")
    # The constructor runs (with __post_init__): a value it refuses is an error at this place.
    source.add(
        1,
        "try:",
        f"    return _cls({', '.join(call)})",
        "except (TypeError, ValueError) as exc:",
        "    raise _invalid(exc) from exc",
    )
    return _Compiled(source.compile(kind), frozenset(), what)


def _typeddict(kind: type, args: tuple[Any, ...]) -> _Compiled:
    hints = _hints(kind, args, extras=True)
    # __required_keys__ misses Required/NotRequired written as strings (from __future__
    # import annotations) before Python 3.14: the resolved hints tell.
    required = set(getattr(kind, "__required_keys__", hints))
    for name, hint in hints.items():
        origin = typing.get_origin(hint)
        if origin is typing.NotRequired:
            required.discard(name)
        elif origin is typing.Required:
            required.add(name)
    what = f"an object for {kind.__qualname__}"
    source = _Source(kind)
    source.env["_not_object"] = lambda value: _mismatch(what, value)
    source.add(0, "def convert(v):", "    if type(v) is not dict:", "        raise _not_object(v)")
    names = list(hints)
    for index, name in enumerate(names):
        if name in required:
            source.field(index, name, _compiled(hints[name]), None)
    entries = ", ".join(f"{name!r}: x{i}" for i, name in enumerate(names) if name in required)
    source.add(1, f"r = {{{entries}}}")
    for index, name in enumerate(names):
        if name not in required:
            source.field(index, name, _compiled(hints[name]), "")
    source.add(1, "return r")
    return _Compiled(source.compile(kind), frozenset(), what)


def _namedtuple(kind: type, args: tuple[Any, ...]) -> _Compiled:
    hints = _hints(kind, args)
    names: tuple[str, ...] = kind._fields  # type: ignore[attr-defined]
    defaults: dict[str, Any] = getattr(kind, "_field_defaults", {})
    items = [_compiled(hints.get(name, Any)) for name in names]
    least = sum(1 for name in names if name not in defaults)
    what = f"an array for {kind.__qualname__}"

    def convert(value: Any) -> Any:
        if type(value) is not list:
            raise _mismatch(what, value)
        if not least <= len(value) <= len(names):
            many = f"{least} to {len(names)}" if least < len(names) else str(least)
            raise ConversionError(f"expected {what} of {many} items, got {len(value)}")
        out = []
        for index, (item, x) in enumerate(zip(items, value, strict=False)):
            if item.exact is None or type(x) in item.exact:
                out.append(x)
                continue
            try:
                out.append(item.convert(x))
            except ConversionError as exc:
                exc._at_item(index)
                raise
        return kind(*out)

    return _Compiled(convert, frozenset(), what)


def _protobuf(kind: type[ProtoMessage]) -> _Compiled:
    what = f"a {kind.DESCRIPTOR.full_name} in protobuf's JSON mapping"

    def convert(value: Any) -> Any:
        try:
            return json_format.ParseDict(value, kind(), ignore_unknown_fields=True)
        except Exception as exc:  # ParseError, and what ParseDict lets through on odd input
            raise ConversionError(f"expected {what}: {exc}") from exc

    return _Compiled(convert, frozenset(), what)


def _pydantic_error(exc: ValueError) -> ConversionError:
    """A pydantic ValidationError as a ConversionError: its first error, at its place."""
    errors = getattr(exc, "errors", None)
    try:
        details = errors() if callable(errors) else []
        first = details[0]
        location = tuple(part for part in first["loc"] if isinstance(part, str | int))
        reason = str(first["msg"])
    except (LookupError, TypeError, ValueError):
        return ConversionError(str(exc))
    if len(details) > 1:
        more = len(details) - 1
        reason += f" (and {more} more error{'s' if more > 1 else ''})"
    return ConversionError(reason, location)


def _pydantic(kind: Any) -> _Compiled:
    validate = kind.model_validate

    def convert(value: Any) -> Any:
        try:
            return validate(value)
        except ValueError as exc:  # pydantic's ValidationError
            raise _pydantic_error(exc) from exc

    return _Compiled(convert, frozenset(), f"an object for {kind.__qualname__}")


# Decoding ----------------------------------------------------------------------------------

# The json module's own scanner (its C one where there is one) and whitespace.
_scan: Callable[[str, int], tuple[Any, int]] = json.scanner.make_scanner(
    json.JSONDecoder()  # type: ignore[arg-type]  # typeshed types its argument oddly
)
_space = re.compile(r"[ \t\n\r]*").match


def parse(data: bytes) -> Any:
    """``json.loads(data)``, for a third of its cost on a small body.

    For bytes, ``json.loads`` spends more time finding the encoding (and in its Python
    wrapper) than parsing: a UTF-8 body is decoded here and handed to the same C scanner.
    Anything else (UTF-16 or 32, a BOM, surrogates encoded in UTF-8) goes to
    ``json.loads`` itself, so that the result and the errors are the same.
    """
    if type(data) is not bytes or data[:3] == b"\xef\xbb\xbf" or 0 in data[:4]:
        return json.loads(data)
    try:
        text = data.decode()
    except UnicodeDecodeError:
        return json.loads(data)
    try:
        value, end = _scan(text, _space(text, 0).end())  # type: ignore[union-attr]
    except StopIteration as exc:
        raise json.JSONDecodeError("Expecting value", text, exc.value) from None
    end = _space(text, end).end()  # type: ignore[union-attr]  # "*" always matches
    if end != len(text):
        raise json.JSONDecodeError("Extra data", text, end)
    return value


_decoders: dict[Any, Callable[[bytes], Any]] = {}


def decode(data: bytes, into: Any) -> Any:
    """Parse the JSON body ``data`` and convert it into ``into`` (``Any``/``None``: as parsed).

    Raises ``json.JSONDecodeError`` for text that is not JSON, ConversionError for a value
    that does not fit, TypeError for a type no JSON converts into.
    """
    try:
        decoder = _decoders.get(into)
    except TypeError:  # an unhashable annotation
        return _make_decoder(into)(data)
    if decoder is None:
        decoder = decoder_for(into)
    return decoder(data)


def decoder_for(into: Any) -> Callable[[bytes], Any]:
    """The function from a JSON body to a value of ``into``, made once per type."""
    decoder = _make_decoder(into)
    if len(_decoders) >= _CACHE_LIMIT:
        _decoders.clear()
    _decoders[into] = decoder
    return decoder


def _make_decoder(into: Any) -> Callable[[bytes], Any]:
    loads = parse
    if into is None or into is Any or into is object:
        return loads
    if isinstance(into, type) and issubclass(into, ProtoMessage):
        proto = into

        def parse_proto(data: bytes) -> Any:
            return json_format.Parse(data, proto(), ignore_unknown_fields=True)

        return parse_proto
    if isinstance(into, type) and _is_pydantic(into):
        validate_json = into.model_validate_json  # type: ignore[attr-defined]

        def validate(data: bytes) -> Any:
            try:
                return validate_json(data)
            except ValueError as exc:
                raise _pydantic_error(exc) from exc

        return validate
    convert = _compiled(into).convert

    def decode(data: bytes) -> Any:
        return convert(loads(data))

    return decode


# Encoding ----------------------------------------------------------------------------------

_encoders: dict[type, Callable[[Any], Any]] = {}


def _default(value: Any) -> Any:
    """What the json module calls for a value it cannot write: a JSON-able stand-in."""
    kind = type(value)
    encoder = _encoders.get(kind)
    if encoder is None:
        encoder = _encoder_for(kind)
        if len(_encoders) >= _CACHE_LIMIT:
            _encoders.clear()
        _encoders[kind] = encoder
    return encoder(value)


def _proto_dict(message: ProtoMessage) -> Any:
    return json_format.MessageToDict(message)


def _pydantic_dump(model: Any) -> Any:
    return model.model_dump(mode="json")


def _b64encode(value: bytes | bytearray | memoryview) -> str:
    return base64.b64encode(value).decode("ascii")


def _encoder_for(kind: type) -> Callable[[Any], Any]:
    if dataclasses.is_dataclass(kind):
        # All fields, as dataclasses.asdict writes them, but one level at a time: the json
        # module comes back here for the nested ones.
        names = [field.name for field in dataclasses.fields(kind)]
        entries = ", ".join(f"{name!r}: o.{name}" for name in names)
        text = f"def encode(o):\n    return {{{entries}}}\n"
        encoder: Callable[[Any], Any] = _define(
            text, {}, f"encoder of {kind.__module__}.{kind.__qualname__}"
        )
        return encoder
    if issubclass(kind, enum.Enum):
        return lambda member: member.value
    if issubclass(kind, dt.datetime | dt.date | dt.time):
        return lambda moment: moment.isoformat()
    if issubclass(kind, uuid.UUID | decimal.Decimal):
        return str
    if issubclass(kind, bytes | bytearray | memoryview):
        return _b64encode
    if issubclass(kind, set | frozenset):
        return list
    if issubclass(kind, ProtoMessage):
        return _proto_dict
    if hasattr(kind, "model_dump") and _is_pydantic(kind):
        return _pydantic_dump
    raise TypeError(f"Object of type {kind.__qualname__} is not JSON serializable")


# The json module's C encoder, made once: JSONEncoder.encode makes one per call. No
# circular-reference markers (a dict reused across calls would keep the ids an error left
# in it); a cycle ends in RecursionError instead, reported as the ValueError json raises.
_c_encoder = getattr(json.encoder, "c_make_encoder", None)
_fallback = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), default=_default, check_circular=False
)
_iterencode: Callable[[Any, int], Iterable[str]] = (
    _c_encoder(None, _default, json.encoder.encode_basestring, None, ":", ",", False, False, True)
    if _c_encoder is not None
    else lambda value, _: _fallback.iterencode(value)  # a Python without the C accelerator
)


def _write(value: Any) -> str:
    if type(value) is str:
        return json.encoder.encode_basestring(value)
    try:
        return "".join(_iterencode(value, 0))
    except RecursionError:
        raise ValueError("Circular reference detected (or nesting too deep)") from None


def _plain(value: Any) -> Any:
    """``value`` in JSON's own types, keys included (the json module writes only str, int,
    float, bool and None keys; an enum, UUID or date key goes through here)."""
    kind = type(value)
    if kind is str or kind is int or kind is float or kind is bool or value is None:
        return value
    if isinstance(value, dict):
        return {_key_text(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, str | int | float) and not isinstance(value, enum.Enum):
        return value
    return _plain(_default(value))


def _dumps(value: Any) -> bytes:
    try:
        text = _write(value)
    except TypeError:
        # Most often a key the json module does not write (an enum, a UUID); a value no
        # encoder knows fails again, with its own message.
        try:
            plain = _plain(value)
        except RecursionError:
            raise ValueError("Circular reference detected (or nesting too deep)") from None
        text = _write(plain)
    return text.encode()


def _proto_json(value: ProtoMessage) -> bytes:
    text: str = json_format.MessageToJson(value, indent=None)
    return text.encode()


def _pydantic_json(value: Any) -> bytes:
    text: str = value.model_dump_json()
    return text.encode()


_top_encoders: dict[type, Callable[[Any], bytes]] = {}


def encode(value: Any) -> bytes:
    """``value`` as a JSON body; TypeError (or ValueError) when it cannot be written."""
    kind = type(value)
    encoder = _top_encoders.get(kind)
    if encoder is None:
        if issubclass(kind, ProtoMessage):
            encoder = _proto_json
        elif hasattr(kind, "model_dump_json") and _is_pydantic(kind):
            encoder = _pydantic_json
        else:
            encoder = _dumps
        if len(_top_encoders) >= _CACHE_LIMIT:
            _top_encoders.clear()
        _top_encoders[kind] = encoder
    return encoder(value)
