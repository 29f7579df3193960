"""Typed JSON payloads: each type family decoded (validated, converted) and encoded, the
errors naming the field path, round trips of generated dataclass trees, and a Service
delivering converted values while bad payloads go to on_error as DecodeError."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import itertools
import json
import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import (
    Annotated,
    Any,
    Generic,
    Literal,
    NamedTuple,
    NewType,
    NotRequired,
    Optional,
    Required,
    TypedDict,
    TypeVar,
)

import pytest
from _helpers import Inbox, quiesce, wait_until
from _proto import OrderCreated as ProtoOrder
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import microbroker
from microbroker import Message, codecs
from microbroker._convert import parse

codec = codecs.get_codec(codecs.JSON)
ConversionError = codecs.ConversionError


def decode(body: bytes | str, into: Any) -> Any:
    return codec.decode(body.encode() if isinstance(body, str) else body, into)


def as_json(value: Any) -> Any:
    """What encode wrote, parsed (so that tests compare values, not spacing)."""
    return json.loads(codec.encode(value))


# Types used by the tests (at module level: annotations resolve against module globals) ---


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Perm(enum.IntFlag):
    READ = 1
    WRITE = 2


@dataclasses.dataclass
class Customer:
    name: str
    email: str | None = None


@dataclasses.dataclass
class LineItem:
    sku: str
    price: float
    quantity: int = 1


@dataclasses.dataclass
class Order:
    id: int
    customer: Customer
    items: list[LineItem]
    notes: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Everything:
    color: Color
    level: Level
    perm: Perm
    kind: Literal["a", "b", 3]
    when: dt.datetime
    day: dt.date
    at: dt.time
    ref: uuid.UUID
    amount: decimal.Decimal
    blob: bytes
    pair: tuple[int, str]
    many: tuple[int, ...]
    unique: frozenset[int]
    maybe: Optional[int]  # noqa: UP045 - the typing spelling is what is tested here
    either: int | str
    anything: Any


EVERYTHING = Everything(
    color=Color.BLUE,
    level=Level.HIGH,
    perm=Perm.READ | Perm.WRITE,
    kind=3,
    when=dt.datetime(2026, 12, 1, 16, 51, 7, 123456, tzinfo=dt.timezone(dt.timedelta(hours=1))),
    day=dt.date(2026, 12, 1),
    at=dt.time(16, 51, 7),
    ref=uuid.UUID("12345678-1234-5678-1234-567812345678"),
    amount=decimal.Decimal("12.50"),
    blob=b"\x00\xffbin",
    pair=(1, "one"),
    many=(1, 2, 3),
    unique=frozenset({3}),
    maybe=None,
    either="5",
    anything={"free": [1, "form"]},
)

EVERYTHING_JSON = {
    "color": "blue",
    "level": 2,
    "perm": 3,
    "kind": 3,
    "when": "2026-12-01T16:51:07.123456+01:00",
    "day": "2026-12-01",
    "at": "16:51:07",
    "ref": "12345678-1234-5678-1234-567812345678",
    "amount": "12.50",
    "blob": "AP9iaW4=",
    "pair": [1, "one"],
    "many": [1, 2, 3],
    "unique": [3],
    "maybe": None,
    "either": "5",
    "anything": {"free": [1, "form"]},
}


@dataclasses.dataclass
class Node:
    value: int
    children: list[Node] = dataclasses.field(default_factory=list)


T = TypeVar("T")


@dataclasses.dataclass
class Box(Generic[T]):
    item: T
    items: list[T]


@dataclasses.dataclass
class IntBox(Box[int]):
    pass


@dataclasses.dataclass
class Positive:
    value: int

    def __post_init__(self) -> None:
        if self.value <= 0:
            raise ValueError("value must be positive")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Frozen:
    a: int
    b: str = "b"
    computed: int = dataclasses.field(init=False, default=0)


class Movie(TypedDict):
    title: str
    year: int
    tags: NotRequired[list[str]]


class Partial(TypedDict, total=False):
    title: Required[str]
    rating: float
    when: dt.date


class Point(NamedTuple):
    x: int
    y: int
    label: str = ""


UserId = NewType("UserId", int)


@dataclasses.dataclass
class WithProto:
    order: ProtoOrder
    note: str


@dataclasses.dataclass
class Keys:
    by_int: dict[int, str]
    by_color: dict[Color, int]
    by_level: dict[Level, int]
    by_ref: dict[uuid.UUID, int]
    by_day: dict[dt.date, int]


@dataclasses.dataclass
class Unsupported:
    handle: Callable[[], None]


@dataclasses.dataclass
class Loop:
    nexts: list[Loop]
    bad: Unsupported


# Dataclasses, nested ---------------------------------------------------------------------


def test_the_reported_case_is_refused_with_the_field() -> None:
    """Issue 21: {"id": "abc", "item": 5} reached a handler as OrderCreated(id='abc', item=5)."""

    @dataclasses.dataclass
    class OrderCreated:
        id: int
        item: str

    with pytest.raises(ConversionError) as info:
        codec.decode(b'{"id": "abc", "item": 5}', OrderCreated)
    assert str(info.value) == "id: expected an integer, got 'abc'"
    assert info.value.path == "id"
    assert info.value.location == ("id",)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, microbroker.CodecError)
    assert codec.decode(b'{"id": 1, "item": "book"}', OrderCreated) == OrderCreated(1, "book")


ORDER = Order(
    id=7,
    customer=Customer("Ada"),
    items=[LineItem("a", 1.5), LineItem("b", 2.0, 3)],
    notes={"gift": "yes"},
)
ORDER_JSON = {
    "id": 7,
    "customer": {"name": "Ada", "email": None},
    "items": [
        {"sku": "a", "price": 1.5, "quantity": 1},
        {"sku": "b", "price": 2.0, "quantity": 3},
    ],
    "notes": {"gift": "yes"},
}


def test_nested_dataclasses_both_ways() -> None:
    assert as_json(ORDER) == ORDER_JSON
    decoded = decode(json.dumps(ORDER_JSON), Order)
    assert decoded == ORDER
    assert type(decoded.customer) is Customer
    assert all(type(item) is LineItem for item in decoded.items)


def test_lists_of_dataclasses_encode() -> None:
    """Issue 21: publishing [O(1)] failed with 'Object of type O is not JSON serializable'."""
    assert as_json([LineItem("a", 1.0)]) == [{"sku": "a", "price": 1.0, "quantity": 1}]
    assert as_json({"k": (Customer("x"),)}) == {"k": [{"name": "x", "email": None}]}
    assert decode('[{"sku": "a", "price": 1}]', list[LineItem]) == [LineItem("a", 1.0)]


def test_defaults_unknown_fields_and_integers_as_floats() -> None:
    body = '{"id": 1, "customer": {"name": "x", "new": 1}, "items": [{"sku": "s", "price": 2}]}'
    decoded = decode(body, Order)
    assert decoded == Order(1, Customer("x"), [LineItem("s", 2.0)])
    assert type(decoded.items[0].price) is float  # 2 arrived; the field is a float
    assert decoded.notes == {}
    assert decoded.notes is not decode(body, Order).notes  # default_factory: one per value


def test_every_scalar_family_both_ways() -> None:
    assert as_json(EVERYTHING) == EVERYTHING_JSON
    assert decode(json.dumps(EVERYTHING_JSON), Everything) == EVERYTHING
    assert decode(codec.encode(EVERYTHING), Everything) == EVERYTHING


def test_recursive_and_generic_dataclasses() -> None:
    tree = Node(1, [Node(2), Node(3, [Node(4)])])
    assert decode(codec.encode(tree), Node) == tree
    assert decode('{"item": 1, "items": [2, 3]}', Box[int]) == Box(1, [2, 3])
    assert decode('{"item": 1, "items": [2]}', IntBox) == IntBox(1, [2])
    with pytest.raises(ConversionError, match=r"^items\[0\]: expected an integer, got 'x'$"):
        decode('{"item": 1, "items": ["x"]}', Box[int])
    # An unbound parameter takes anything.
    assert decode('{"item": "a", "items": [null]}', Box) == Box("a", [None])


def test_post_init_validation_fails_at_its_place() -> None:
    with pytest.raises(ConversionError) as info:
        decode('[{"value": 1}, {"value": 0}]', list[Positive])
    assert str(info.value) == "[1]: invalid Positive: value must be positive"
    assert info.value.location == (1,)


def test_frozen_slotted_keyword_only_dataclasses() -> None:
    value = decode('{"a": 1, "computed": 99}', Frozen)  # init=False fields are not read
    assert value == Frozen(a=1)
    assert value.computed == 0
    assert as_json(value) == {"a": 1, "b": "b", "computed": 0}


# TypedDict, NamedTuple, NewType, Annotated -----------------------------------------------


def test_typeddicts_total_and_not() -> None:
    assert decode('{"title": "T", "year": 1999, "extra": 1}', Movie) == {
        "title": "T",
        "year": 1999,
    }
    assert decode('{"title": "T", "year": 1999, "tags": ["a"]}', Movie)["tags"] == ["a"]
    with pytest.raises(ConversionError, match=r"^year: missing required field$"):
        decode('{"title": "T"}', Movie)
    with pytest.raises(ConversionError, match=r"^tags\[1\]: expected a string, got 2$"):
        decode('{"title": "T", "year": 1, "tags": ["a", 2]}', Movie)
    assert decode('{"title": "T"}', Partial) == {"title": "T"}
    full = decode('{"title": "T", "rating": 4, "when": "2026-01-02"}', Partial)
    assert full == {"title": "T", "rating": 4.0, "when": dt.date(2026, 1, 2)}
    with pytest.raises(ConversionError, match=r"^title: missing required field$"):
        decode('{"rating": 4}', Partial)
    assert as_json(full) == {"title": "T", "rating": 4.0, "when": "2026-01-02"}


def test_named_tuples_new_types_and_annotated() -> None:
    assert decode("[1, 2]", Point) == Point(1, 2)
    assert decode('[1, 2, "p"]', Point) == Point(1, 2, "p")
    assert as_json(Point(1, 2, "p")) == [1, 2, "p"]
    with pytest.raises(ConversionError, match="expected an array for Point of 2 to 3 items"):
        decode("[1]", Point)
    with pytest.raises(ConversionError, match=r"^\[1\]: expected an integer"):
        decode('[1, "2"]', Point)
    assert decode("5", UserId) == 5
    assert decode("[5]", list[Annotated[int, "meta"]]) == [5]
    with pytest.raises(ConversionError):
        decode('"5"', UserId)


# Builtins and generics -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("into", "body", "expected"),
    [
        (int, "5", 5),
        (float, "5", 5.0),
        (float, "2.5", 2.5),
        (str, '"s"', "s"),
        (bool, "true", True),
        (type(None), "null", None),
        (list[int], "[1, 2]", [1, 2]),
        (list[float], "[1, 2.5]", [1.0, 2.5]),
        (Sequence[str], '["a"]', ["a"]),
        (dict[str, LineItem], '{"x": {"sku": "s", "price": 1}}', {"x": LineItem("s", 1.0)}),
        (Mapping[str, int], '{"a": 1}', {"a": 1}),
        (dict[int, str], '{"1": "a", "-2": "b"}', {1: "a", -2: "b"}),
        (dict[float, int], '{"1.5": 1}', {1.5: 1}),
        (dict[bool, int], '{"true": 1}', {True: 1}),
        (tuple[int, str], '[1, "a"]', (1, "a")),
        (tuple[int, ...], "[1, 2, 3]", (1, 2, 3)),
        (tuple[()], "[]", ()),
        (tuple, '[1, "a"]', (1, "a")),
        (set[int], "[1, 2, 1]", {1, 2}),
        (list, '[1, "a"]', [1, "a"]),
        (dict, '{"a": [1]}', {"a": [1]}),
        (Any, '{"a": [1]}', {"a": [1]}),
        (object, "[1]", [1]),
        (int | None, "null", None),
        (int | str, '"5"', "5"),
        (float | str, "1", 1.0),
        (Literal["x", "y"], '"y"', "y"),
        (list[Color], '["red", "blue"]', [Color.RED, Color.BLUE]),
        (
            dict[str, dt.datetime],
            '{"a": "2026-01-02T03:04:05Z"}',
            {"a": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)},
        ),
    ],
)
def test_builtins_and_generics(into: Any, body: str, expected: Any) -> None:
    decoded = decode(body, into)
    assert decoded == expected
    assert type(decoded) is type(expected)
    assert decode(codec.encode(decoded), into) == expected


def test_dict_keys_of_other_types_both_ways() -> None:
    value = Keys(
        by_int={1: "a"},
        by_color={Color.RED: 1},
        by_level={Level.LOW: 2},
        by_ref={uuid.UUID(int=1): 3},
        by_day={dt.date(2026, 1, 2): 4},
    )
    assert as_json(value) == {
        "by_int": {"1": "a"},
        "by_color": {"red": 1},
        "by_level": {"1": 2},
        "by_ref": {"00000000-0000-0000-0000-000000000001": 3},
        "by_day": {"2026-01-02": 4},
    }
    assert decode(codec.encode(value), Keys) == value
    with pytest.raises(ConversionError) as info:
        decode('{"x": {"one": "a"}}', dict[str, dict[int, str]])
    assert str(info.value) == "['x']['one']: invalid key: expected an integer, got 'one'"
    assert info.value.location == ("x", "one")


def test_protobuf_messages_inside_dataclasses() -> None:
    value = WithProto(ProtoOrder(id=5, item="pen", payload=b"\x01"), "n")
    assert as_json(value) == {"order": {"id": "5", "item": "pen", "payload": "AQ=="}, "note": "n"}
    assert decode(codec.encode(value), WithProto) == value
    with pytest.raises(
        ConversionError, match=r"^order: expected a microbroker_tests\.OrderCreated"
    ):
        decode('{"order": {"id": "x"}, "note": "n"}', WithProto)
    # At the top level protobuf's own JSON mapping is used, as before.
    assert decode(codec.encode(value.order), ProtoOrder) == value.order


# pydantic (optional) ---------------------------------------------------------------------


def _pydantic() -> Any:
    try:
        import pydantic
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("pydantic is not installed: tox -e core installs it")
        pytest.skip("pydantic is not installed (tox -e core installs it)")
    return pydantic


def test_pydantic_models_top_level_and_nested() -> None:
    pydantic = _pydantic()

    class Price(pydantic.BaseModel):  # type: ignore[name-defined, misc]
        amount: float
        currency: str = "EUR"

    @dataclasses.dataclass
    class Basket:
        prices: list[Price]  # type: ignore[valid-type]

    Basket.__annotations__["prices"] = list[Price]  # the class is local: no module global
    basket = Basket([Price(amount=1.5), Price(amount=2, currency="USD")])
    assert as_json(basket) == {
        "prices": [{"amount": 1.5, "currency": "EUR"}, {"amount": 2.0, "currency": "USD"}]
    }
    assert decode(codec.encode(basket), Basket) == basket
    assert decode(codec.encode(basket.prices[0]), Price) == basket.prices[0]
    with pytest.raises(ConversionError) as info:
        decode('{"prices": [{"amount": 1}, {"amount": "lots"}]}', Basket)
    assert info.value.location == ("prices", 1, "amount")
    assert str(info.value).startswith("prices[1].amount: Input should be a valid number")
    with pytest.raises(ConversionError) as info:
        decode('{"amount": "lots"}', Price)
    assert info.value.path == "amount"


# Errors name the path --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("into", "body", "message"),
    [
        (Order, "[]", "expected an object for Order, got an array"),
        (Order, '{"customer": {"name": "x"}, "items": []}', "id: missing required field"),
        (
            Order,
            '{"id": 1, "customer": {"name": "x"}, "items": [{"sku": "a", "price": 1}, '
            '{"sku": "b", "price": 2}, {"sku": "c", "price": "abc"}]}',
            "items[2].price: expected a number, got 'abc'",
        ),
        (
            Order,
            '{"id": 1, "customer": {"name": 5}, "items": []}',
            "customer.name: expected a string, got 5",
        ),
        (
            Order,
            '{"id": true, "customer": {"name": "x"}, "items": []}',
            "id: expected an integer, got true",
        ),
        (
            Order,
            '{"id": 1.0, "customer": {"name": "x"}, "items": []}',
            "id: expected an integer, got 1.0",
        ),
        (
            Order,
            '{"id": 1, "customer": null, "items": []}',
            "customer: expected an object for Customer, got null",
        ),
        (
            Order,
            '{"id": 1, "customer": {"name": "x"}, "items": [], "notes": {"a": 1}}',
            "notes['a']: expected a string, got 1",
        ),
        (Customer, '{"name": "x", "email": 5}', "email: expected a string or null, got 5"),
        (
            list[Color],
            '["red", "green"]',
            "[1]: expected one of 'red', 'blue' (Color), got 'green'",
        ),
        (Level, "3", "expected one of 1, 2 (Level), got 3"),
        (Level, "true", "expected one of 1, 2 (Level), got true"),
        (Literal["a", 1], "true", "expected one of 'a', 1, got true"),
        (dt.datetime, '"yesterday"', "expected an ISO 8601 datetime, got 'yesterday'"),
        (dt.date, '"2026-13-01"', "expected an ISO 8601 date, got '2026-13-01'"),
        (dt.time, "1", "expected an ISO 8601 time, got 1"),
        (uuid.UUID, '"nope"', "expected a UUID, got 'nope'"),
        (
            decimal.Decimal,
            '"1.2.3"',
            "expected a decimal number (a number or a numeric string), got '1.2.3'",
        ),
        (bytes, '"not base64!"', "expected a base64 string, got 'not base64!'"),
        (tuple[int, str], "[1]", "expected an array of 2 items, got 1"),
        (tuple[int, str], "[1, 2]", "[1]: expected a string, got 2"),
        (int | str, "[]", "expected an integer or a string, got an array"),
        (list[int | Customer], '[1, {"name": 2}]', "[1].name: expected a string, got 2"),
        (Optional[Positive], '{"value": -1}', "invalid Positive: value must be positive"),  # noqa: UP045
        (float, "1" + "0" * 400, "number too large for a float: 1" + "0" * 56 + "..."),
        (set[int], '{"a": 1}', "expected an array, got an object"),
        (str, '"' + "x" * 100 + '"', "expected nothing"),
    ],
)
def test_errors_name_the_field_path(into: Any, body: str, message: str) -> None:
    if message == "expected nothing":
        assert decode(body, into) == "x" * 100
        with pytest.raises(ConversionError, match=r"expected an integer, got 'x{56}\.\.\.$"):
            decode(body, int)  # long values are cut short in messages
        return
    with pytest.raises(ConversionError) as info:
        decode(body, into)
    assert str(info.value) == message
    if ": " in message and not message.startswith(("expected", "number", "invalid")):
        assert info.value.path == message.split(": ", 1)[0]


def test_bad_json_is_the_json_modules_error() -> None:
    with pytest.raises(json.JSONDecodeError):
        decode("{bad", Order)
    with pytest.raises(json.JSONDecodeError, match="Extra data"):
        decode("1 2", int)


def test_unsupported_annotations_are_type_errors_naming_the_type() -> None:
    class Plain:
        pass

    with pytest.raises(TypeError, match=r"cannot convert JSON into .*Plain"):
        decode("{}", Plain)
    with pytest.raises(TypeError, match="dict keys of type"):
        decode("{}", dict[Customer, int])
    with pytest.raises(TypeError, match="cannot convert JSON into Callable"):
        decode('{"handle": 1}', Unsupported)
    # A recursive type that failed to compile leaves nothing half-built behind.
    for _ in range(2):
        with pytest.raises(TypeError):
            decode('{"nexts": [], "bad": {}}', Loop)
        with pytest.raises(TypeError):
            decode("[]", list[Loop])


def test_encode_errors() -> None:
    with pytest.raises(microbroker.EncodeError, match="ellipsis is not JSON serializable"):
        codec.encode(Customer(...))  # type: ignore[arg-type]
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(microbroker.EncodeError, match="Circular"):
        codec.encode(loop)
    with pytest.raises(microbroker.EncodeError, match="keys must be"):
        codec.encode({Frozen(a=1): 1})


def test_decode_error_carries_the_path() -> None:
    try:
        decode('{"id": "x", "customer": {"name": "x"}, "items": []}', Order)
    except ConversionError as exc:
        cause = exc
    error = microbroker.DecodeError(
        topic="t", content_type="application/json", expected=Order, cause=cause
    )
    assert error.path == "id"
    assert "into Order: id: expected an integer, got 'x'" in str(error)
    other = microbroker.DecodeError(topic="t", content_type=None, expected=int, cause="bad")
    assert other.path is None
    given_path = microbroker.DecodeError(
        topic="t", content_type=None, expected=int, cause="bad", path="a.b"
    )
    assert given_path.path == "a.b"


# The fast parse is json.loads ------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


def _outcome(function: Callable[[bytes], Any], data: bytes) -> Any:
    try:
        return ("value", json.dumps(function(data)))  # dumps: NaN == NaN, 1 vs 1.0 vs True
    except ValueError as exc:
        return ("error", type(exc), str(exc))


@settings(max_examples=300, deadline=None)
@given(
    value=json_values,
    encoding=st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-32-be"]),
    spaces=st.sampled_from(["", " ", "\n\t", " x"]),
)
def test_parse_is_json_loads_on_any_json(value: Any, encoding: str, spaces: str) -> None:
    data = (spaces[:2] + json.dumps(value, ensure_ascii=False) + spaces).encode(
        encoding, "surrogatepass"
    )
    assert _outcome(parse, data) == _outcome(json.loads, data)


@settings(max_examples=300, deadline=None)
@given(
    data=st.binary(max_size=40)
    | st.text(max_size=20).map(lambda t: t.encode("utf-8", "surrogatepass"))
)
def test_parse_is_json_loads_on_any_bytes(data: bytes) -> None:
    assert _outcome(parse, data) == _outcome(json.loads, data)


# Round trips of generated dataclass trees ------------------------------------------------

# Whole seconds: Python's own datetime.fromisoformat drops the microseconds of a UTC offset
# (no real zone has them; historical offsets have seconds, and those round-trip).
_offsets = st.integers(min_value=-(23 * 3600 + 59 * 60), max_value=23 * 3600 + 59 * 60).map(
    lambda seconds: dt.timedelta(seconds=seconds)
)
_zones = st.none() | st.builds(dt.timezone, _offsets)


class Case(NamedTuple):
    """A generated type, a strategy for its values, and (for the error test) a walk of its
    JSON form: (location, a JSON value this place must refuse) for each leaf."""

    type: Any
    values: st.SearchStrategy[Any]
    leaves: Callable[[Any], list[tuple[tuple[str | int, ...], Any]]]


def _leaf(tp: Any, values: st.SearchStrategy[Any], wrong: Any) -> Case:
    return Case(tp, values, lambda _: [((), wrong)])


LEAVES = [
    _leaf(int, st.integers(), "1"),
    _leaf(float, st.floats(allow_nan=False), "1.5"),
    _leaf(str, st.text(), 1),
    _leaf(bool, st.booleans(), 1),
    _leaf(bytes, st.binary(max_size=20), 1),
    _leaf(dt.datetime, st.datetimes(timezones=_zones), 1),
    _leaf(dt.date, st.dates(), "2026-02-30"),
    _leaf(dt.time, st.times(timezones=_zones), False),
    _leaf(uuid.UUID, st.uuids(), "x"),
    _leaf(decimal.Decimal, st.decimals(allow_nan=False), True),
    _leaf(Color, st.sampled_from(Color), "RED"),
    _leaf(Level, st.sampled_from(Level), "1"),
    _leaf(Literal["a", 3], st.sampled_from(["a", 3]), "3"),
]
_names = itertools.count()


def _list_of(case: Case) -> Case:
    return Case(
        list[case.type],
        st.lists(case.values, max_size=3),
        lambda v: [((i, *loc), w) for i, x in enumerate(v) for loc, w in case.leaves(x)],
    )


def _dict_of(case: Case) -> Case:
    return Case(
        dict[str, case.type],
        st.dictionaries(st.text(max_size=4), case.values, max_size=3),
        lambda v: [((k, *loc), w) for k, x in v.items() for loc, w in case.leaves(x)],
    )


def _optional(case: Case) -> Case:
    return Case(
        Optional[case.type],  # noqa: UP045
        st.none() | case.values,
        lambda v: [] if v is None else case.leaves(v),
    )


def _tuple_of(case: Case) -> Case:
    return Case(
        tuple[case.type, ...],
        st.lists(case.values, max_size=3).map(tuple),
        lambda v: [((i, *loc), w) for i, x in enumerate(v) for loc, w in case.leaves(x)],
    )


def _object_of(cases: list[Case], typed_dict: bool) -> Case:
    names = [f"f{i}" for i in range(len(cases))]
    if typed_dict:
        tp: Any = TypedDict(
            f"TD{next(_names)}", dict(zip(names, (c.type for c in cases), strict=True))
        )  # type: ignore[operator]
        values = st.fixed_dictionaries({n: c.values for n, c in zip(names, cases, strict=True)})
    else:
        tp = dataclasses.make_dataclass(
            f"DC{next(_names)}", list(zip(names, (c.type for c in cases), strict=True))
        )
        values = st.builds(tp, *(c.values for c in cases))

    def leaves(v: Any) -> list[tuple[tuple[str | int, ...], Any]]:
        return [
            ((n, *loc), w) for n, c in zip(names, cases, strict=True) for loc, w in c.leaves(v[n])
        ]

    return Case(tp, values, leaves)


cases = st.recursive(
    st.sampled_from(LEAVES),
    lambda inner: st.one_of(
        inner.map(_list_of),
        inner.map(_dict_of),
        inner.map(_optional),
        inner.map(_tuple_of),
        st.lists(inner, min_size=1, max_size=4).map(lambda cs: _object_of(cs, False)),
        st.lists(inner, min_size=1, max_size=4).map(lambda cs: _object_of(cs, True)),
    ),
    max_leaves=8,
)
# The trees: a dataclass (or a TypedDict) at the root, anything generated below.
trees = st.builds(_object_of, st.lists(cases, min_size=1, max_size=4), st.booleans())

TREES = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@TREES
@given(case=trees, data=st.data())
def test_generated_trees_round_trip(case: Case, data: st.DataObject) -> None:
    value = data.draw(case.values)
    assert decode(codec.encode(value), case.type) == value


@TREES
@given(case=trees, data=st.data())
def test_a_wrong_leaf_anywhere_is_named_by_its_path(case: Case, data: st.DataObject) -> None:
    value = data.draw(case.values)
    tree = json.loads(codec.encode(value))
    leaves = case.leaves(tree)
    if not leaves:
        return
    location, wrong = data.draw(st.sampled_from(leaves))
    spot: Any = tree
    for key in location[:-1]:
        spot = spot[key]
    if location:
        spot[location[-1]] = wrong
    else:
        tree = wrong
    with pytest.raises(ConversionError) as info:
        decode(json.dumps(tree), case.type)
    assert info.value.location == location
    assert str(info.value).startswith(info.value.path)


# Through a Service -----------------------------------------------------------------------


class Errors:
    def __init__(self) -> None:
        self.seen: list[tuple[BaseException, microbroker.Delivery | None]] = []

    @microbroker.hookimpl
    def on_error(self, error: BaseException, delivery: microbroker.Delivery | None) -> None:
        self.seen.append((error, delivery))


async def test_a_typed_subscriber_gets_converted_values_and_bad_payloads_go_to_on_error(
    address: str, plugin: Callable[..., str]
) -> None:
    errors = Errors()
    plugin(errors, f"errors-{id(errors)}")
    got = Inbox()
    broker = microbroker.get_broker("memory", address=address)
    service = microbroker.Service("typed-payloads", broker=broker)

    @service.subscriber("orders")
    async def on_order(order: Order) -> None:
        got.add(order)

    bad = dict(ORDER_JSON, items=[{"sku": "a", "price": 1}, {"sku": "b", "price": "abc"}])
    async with service:
        await service.event("orders").publish(ORDER)
        await broker.publish(
            "orders", Message(json.dumps(bad).encode(), {"Content-Type": "application/json"})
        )
        await broker.publish(
            "orders", Message(json.dumps(ORDER_JSON).encode(), {"Content-Type": "application/json"})
        )
        await got.wait_for(2)
        await wait_until(
            lambda: any(isinstance(e, microbroker.DecodeError) for e, _ in errors.seen)
        )
        await quiesce()
    assert got.deliveries == [ORDER, ORDER]  # the bad one never reached the handler
    assert type(got.deliveries[0].items[1]) is LineItem
    ((error, delivery),) = [
        (e, d) for e, d in errors.seen if isinstance(e, microbroker.DecodeError)
    ]
    assert isinstance(error, microbroker.DecodeError)
    assert error.path == "items[1].price"
    assert "items[1].price: expected a number, got 'abc'" in str(error)
    assert isinstance(error.cause, ConversionError)
    assert error.cause.location == ("items", 1, "price")
    assert delivery is not None
    assert delivery.rejected, "given up at once: the same bytes cannot decode on a retry"


def test_the_pure_python_encoder_writes_what_the_c_one_writes() -> None:
    """Pythons without the json C accelerator take _fallback; it must write the same text."""
    from microbroker._convert import _fallback, _write

    for value in (EVERYTHING, ORDER, [Point(1, 2)], {"a": None, "b": [1.5, True]}):
        assert "".join(_fallback.iterencode(value)) == _write(value)


class Shop:
    async def Cheapest(self, order: Order) -> LineItem:
        assert all(type(item) is LineItem for item in order.items)
        return min(order.items, key=lambda item: item.price)


async def test_rpc_requests_and_replies_are_converted_too(broker: microbroker.Broker) -> None:
    service = microbroker.Service("shop", broker=broker)
    service.handle(Shop())
    async with service:
        cheapest = await service.client.call("shop", "Shop.Cheapest", ORDER, LineItem)
        assert cheapest == LineItem("a", 1.5)
        assert type(cheapest) is LineItem
        bad = dict(ORDER_JSON, id="x")
        with pytest.raises(microbroker.RpcError) as info:
            await service.client.call("shop", "Shop.Cheapest", bad, LineItem)
    assert info.value.code == 400
    assert "id: expected an integer, got 'x'" in info.value.detail
