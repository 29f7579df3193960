"""microbroker.asyncapi: the AsyncAPI 3.0 document of a Service, its schemas, and its page."""

from __future__ import annotations

import base64
import copy
import dataclasses
import datetime
import decimal
import enum
import gc
import hashlib
import importlib
import json
import os
import re
import sys
import types
import typing
import uuid
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple, NewType, Optional, TypedDict

import pytest
from _helpers import Inbox, wait_until
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from support import asyncapi_rules, asyncapi_shop

import microbroker
from microbroker import asyncapi, codecs
from microbroker.asyncapi import Schemas


def need(module: str) -> Any:
    """Import a test dependency: a failure in CI (tox installs it), a skip elsewhere."""
    try:
        return importlib.import_module(module)
    except ImportError:
        message = f"{module} is not installed (tox -e core installs it)"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


def memory_service(name: str, address: str) -> microbroker.Service:
    return microbroker.Service(name, broker=microbroker.get_broker("memory", address=address))


def payload_validator(doc: dict[str, Any], schema: dict[str, Any]) -> Any:
    """A JSON Schema validator of ``schema``, resolving refs against ``doc``'s components."""
    jsonschema = need("jsonschema")
    root = {"allOf": [schema], "components": doc["components"]}
    return jsonschema.Draft7Validator(
        root, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER
    )


# The document of the sample shop ------------------------------------------------------


@pytest.fixture(scope="module")
def shop() -> dict[str, Any]:
    return asyncapi.document(asyncapi_shop.service)


def test_the_shop_document_follows_the_asyncapi_rules(shop: dict[str, Any]) -> None:
    assert asyncapi_rules.problems(shop) == []
    # And survives JSON: nothing in it that only Python can read.
    assert json.loads(asyncapi.to_json(shop)) == shop


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d["info"].pop("version"), "lacks the required 'version'"),
        (lambda d: d["components"]["schemas"].pop("Money"), "points at nothing"),
        (
            # An operation may only use messages of its own channel.
            lambda d: d["operations"]["ship"].update(
                messages=[{"$ref": "#/channels/orders.placed/messages/OrderPlaced"}]
            ),
            "is not a message of its channel",
        ),
        (lambda d: d["operations"]["bill"].update(action="publish"), "not send or receive"),
        (lambda d: d["channels"]["shipments"].update(address="ship/{id}"), "{id}"),
        (
            lambda d: d["components"]["schemas"]["Money"]["required"].append("cents"),
            "'cents', which is not a property",
        ),
        (lambda d: d["servers"]["http"].update(host="http://h:1"), "holds a scheme"),
        (lambda d: d["channels"]["shipments"].update(topic="x"), "no field of a channel"),
    ],
)
def test_the_rules_catch_a_broken_document(
    shop: dict[str, Any], mutate: Callable[[dict[str, Any]], Any], expected: str
) -> None:
    # The rules can fail: each of these documents breaks one of them.
    broken = copy.deepcopy(shop)
    mutate(broken)
    found = asyncapi_rules.problems(broken)
    assert any(expected in problem for problem in found), found


def test_channels_come_from_subscribers_and_events(shop: dict[str, Any]) -> None:
    addresses = {channel["address"] for channel in shop["channels"].values()}
    assert addresses == {
        "orders.placed",
        "refunds.requested",
        "shipments",
        "audit.raw",
        "orders.paid",
        "invoices.issued",
    }
    actions = {name: op["action"] for name, op in shop["operations"].items()}
    assert actions == {
        "bill": "receive",
        "audit": "receive",
        "refund": "receive",
        "ship": "receive",
        "tap": "receive",
        "publish_orders.paid": "send",
        "publish_invoices.issued": "send",
    }
    # Two subscribers on one topic: one channel, two operations, one message.
    placed = shop["channels"]["orders.placed"]
    assert list(placed["messages"]) == ["OrderPlaced"]
    for name in ("bill", "audit"):
        assert shop["operations"][name]["channel"] == {"$ref": "#/channels/orders.placed"}


def test_operations_carry_the_queue_group_and_the_handler(shop: dict[str, Any]) -> None:
    bill = shop["operations"]["bill"]
    assert bill["x-microbroker-queue"] == "billing"
    assert bill["x-microbroker-handler"] == "support.asyncapi_shop.bill"
    assert bill["summary"] == "Charge the customer for a placed order."
    assert bill["description"] == "Runs in the billing queue group: one instance bills each order."
    assert "x-microbroker-queue" not in shop["operations"]["audit"]
    assert shop["operations"]["ship"]["x-microbroker-queue"] == "warehouse"
    # No protocol binding on the http broker: the extension field says it.
    assert "bindings" not in bill


def test_messages_have_their_content_type(shop: dict[str, Any]) -> None:
    messages = shop["components"]["messages"]
    assert messages["OrderPlaced"]["contentType"] == "application/json"
    assert messages["Refund"]["contentType"] == "application/json"
    assert messages["Shipment"]["contentType"] == "application/protobuf"
    # A raw subscriber takes any body; an untyped Event says what it was told.
    assert "contentType" not in messages["RawMessage"]
    assert messages["RawMessage"]["payload"] == {}
    paid = shop["channels"]["orders.paid"]["messages"]
    invoices = shop["channels"]["invoices.issued"]["messages"]
    assert "contentType" not in asyncapi_rules.deref(shop, next(iter(paid.values())))
    assert asyncapi_rules.deref(shop, next(iter(invoices.values())))["contentType"] == (
        "application/json"
    )
    for message in messages.values():
        assert message["headers"] == {"$ref": "#/components/schemas/MicroHeaders"}
    headers = shop["components"]["schemas"]["MicroHeaders"]["properties"]
    assert set(headers) == {"Content-Type", "Micro-Topic", "Micro-ID"}


def test_dataclass_payloads_nest_by_reference(shop: dict[str, Any]) -> None:
    schemas = shop["components"]["schemas"]
    order = schemas["OrderPlaced"]
    assert order["description"] == "An order, as the checkout places it."
    assert order["required"] == ["id", "customer", "lines", "placed_at"]
    props = order["properties"]
    assert props["id"] == {"type": "string", "format": "uuid"}
    assert props["placed_at"] == {"type": "string", "format": "date-time"}
    assert props["lines"] == {"type": "array", "items": {"$ref": "#/components/schemas/OrderLine"}}
    assert props["status"] == {"$ref": "#/components/schemas/Status"}
    assert props["note"] == {"type": ["string", "null"], "default": None}
    assert props["attributes"] == {"type": "object", "additionalProperties": {"type": "string"}}
    assert props["priority"] == {
        "anyOf": [{"$ref": "#/components/schemas/Priority"}, {"type": "null"}],
        "default": None,
    }
    assert props["totals"] == {
        "type": "object",
        "additionalProperties": {"$ref": "#/components/schemas/Money"},
        "description": "per currency",
    }
    assert schemas["OrderLine"]["properties"]["price"] == {"$ref": "#/components/schemas/Money"}
    assert schemas["Money"]["properties"]["amount"] == {"type": "string", "format": "decimal"}
    assert schemas["Money"]["properties"]["currency"] == {"type": "string", "default": "EUR"}
    assert schemas["Money"]["required"] == ["amount"]
    assert schemas["Status"]["enum"] == ["placed", "paid", "shipped"]
    assert schemas["Status"]["type"] == "string"
    assert schemas["Priority"] == {
        "type": "integer",
        "enum": [1, 2],
        "title": "Priority",
        "x-enum-names": ["LOW", "HIGH"],
    }


def test_typeddict_required_keys_even_under_postponed_annotations(shop: dict[str, Any]) -> None:
    # asyncapi_shop uses `from __future__ import annotations`, under which Python 3.11
    # itself counts NotRequired keys as required.
    refund = shop["components"]["schemas"]["Refund"]
    assert refund["required"] == ["order_id", "amount"]
    assert refund["properties"]["reason"] == {"type": "string"}


def test_protobuf_payloads_from_their_descriptors(shop: dict[str, Any]) -> None:
    schemas = shop["components"]["schemas"]
    shipment = schemas["shop.v1.Shipment"]
    assert shipment["x-protobuf-message"] == "shop.v1.Shipment"
    props = shipment["properties"]
    assert props["order_id"] == {
        "type": "string",
        "x-protobuf-type": "string",
        "x-protobuf-number": 1,
        "x-protobuf-json-name": "orderId",
    }
    assert props["carrier"]["allOf"] == [{"$ref": "#/components/schemas/shop.v1.Carrier"}]
    assert props["parcels"]["type"] == "array"
    assert props["parcels"]["items"] == {"$ref": "#/components/schemas/shop.v1.Parcel"}
    assert props["labels"]["type"] == "object"
    assert props["labels"]["additionalProperties"]["type"] == "string"
    assert props["labels"]["x-protobuf-map-key"] == "string"
    assert props["shipped_at"]["format"] == "date-time"
    assert props["shipped_at"]["x-protobuf-type"] == "google.protobuf.Timestamp"
    assert props["locker"]["x-protobuf-oneof"] == "destination"
    assert props["address"]["x-protobuf-oneof"] == "destination"
    # proto3 `optional` is a oneof of one field that Python does not show as a choice.
    assert "x-protobuf-oneof" not in props["note"]
    assert props["weight_grams"]["format"] == "uint64"
    assert props["weight_grams"]["minimum"] == 0
    assert "required" not in shipment  # proto3 has no required fields
    carrier = schemas["shop.v1.Carrier"]
    assert carrier["enum"] == ["CARRIER_UNSPECIFIED", "POST", "COURIER"]
    assert carrier["x-protobuf-enum-numbers"] == {"CARRIER_UNSPECIFIED": 0, "POST": 1, "COURIER": 2}
    parcel = schemas["shop.v1.Parcel"]["properties"]
    assert parcel["items"]["type"] == "array"
    assert parcel["weight_kg"]["format"] == "double"
    # The map's entry type is part of the map, not a schema of its own.
    assert not any("LabelsEntry" in name for name in schemas)


def test_the_server_is_the_broker() -> None:
    service = memory_service("s", "nats://ops:secret@10.1.2.3:4222/base,nats://10.1.2.4:4222")
    servers = asyncapi.document(service)["servers"]
    # Several seeds are several servers; credentials never reach the document.
    assert servers == {
        "memory": {
            "protocol": "memory",
            "description": "The memory broker.",
            "host": "10.1.2.3:4222",
            "pathname": "/base",
        },
        "memory_2": {
            "protocol": "memory",
            "description": "The memory broker.",
            "host": "10.1.2.4:4222",
        },
    }
    assert "secret" not in json.dumps(asyncapi.document(service))
    plain = asyncapi.document(memory_service("s", "bus-7"))["servers"]
    assert plain["memory"]["host"] == "bus-7"


def test_queue_groups_are_protocol_bindings_where_the_protocol_has_them(address: str) -> None:
    service = memory_service("s", address)

    @service.subscriber("jobs", queue="workers")
    async def work(job: dict[str, int]) -> None:
        pass

    # The registry sets ``name`` on every broker it makes; these stand for brokers
    # registered as nats and kafka (the bindings depend on nothing else).
    service.broker.name = "nats"
    nats = asyncapi.document(service)
    assert nats["operations"]["work"]["bindings"] == {
        "nats": {"queue": "workers", "bindingVersion": "0.1.0"}
    }
    assert nats["servers"]["nats"]["protocol"] == "nats"
    service.broker.name = "kafka"
    kafka = asyncapi.document(service)
    assert kafka["operations"]["work"]["bindings"] == {
        "kafka": {"groupId": {"type": "string", "enum": ["workers"]}, "bindingVersion": "0.5.0"}
    }
    for doc in (nats, kafka):
        assert doc["operations"]["work"]["x-microbroker-queue"] == "workers"
        assert asyncapi_rules.problems(doc) == []


def test_info_version_and_description(address: str) -> None:
    doc = asyncapi.document(memory_service("billing", address), version="2.1.0", description="d")
    assert doc["info"] == {"title": "billing", "version": "2.1.0", "description": "d"}
    assert doc["channels"] == {}
    assert doc["operations"] == {}
    assert asyncapi_rules.problems(doc) == []


def test_topics_that_are_no_identifiers(address: str) -> None:
    service = memory_service("s", address)

    @service.subscriber("shop/+/orders")
    async def one(body: str) -> None:
        pass

    @service.subscriber("shop/#")
    async def two(body: bytes) -> None:
        pass

    odd = service.event("a b~c")
    doc = asyncapi.document(service)
    assert asyncapi_rules.problems(doc) == []
    by_address = {channel["address"]: key for key, channel in doc["channels"].items()}
    assert set(by_address) == {"shop/+/orders", "shop/#", "a b~c"}
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-]+", key) for key in by_address.values())
    message = asyncapi_rules.deref(doc, doc["operations"]["one"]["messages"][0])
    assert message["contentType"] == "text/plain"
    assert message["payload"] == {"type": "string"}
    message = asyncapi_rules.deref(doc, doc["operations"]["two"]["messages"][0])
    assert message["contentType"] == "application/octet-stream"
    assert odd.topic == "a b~c"


def test_handler_objects_and_same_named_handlers(address: str) -> None:
    service = memory_service("s", address)

    class Counter:
        """Counts what it sees."""

        async def __call__(self, body: dict[str, int]) -> None:
            pass

    service.server.subscribe(service.server.new_subscriber("a", Counter()))
    for topic in ("b", "c"):

        async def handle(body: int) -> None:
            pass

        service.server.subscribe(service.server.new_subscriber(topic, handle))
    doc = asyncapi.document(service)
    assert list(doc["operations"]) == ["Counter", "handle", "handle_2"]
    assert doc["operations"]["Counter"]["summary"] == "Counts what it sees."
    assert asyncapi_rules.problems(doc) == []


# Service.events --------------------------------------------------------------------


def test_service_records_its_events_while_they_are_in_use(address: str) -> None:
    service = memory_service("s", address)
    first = service.event("a")
    second = service.event("b", content_type="application/json")
    assert service.events == (first, second)
    # An Event made per publish and dropped is not kept alive by the service.
    service.event("c")
    gc.collect()
    assert service.events == (first, second)
    # Several Events on one topic and content type are one operation.
    again = service.event("a")
    doc = asyncapi.document(service)
    assert [op["channel"]["$ref"] for op in doc["operations"].values()] == [
        "#/channels/a",
        "#/channels/b",
    ]
    del again


# Schemas of Python types -----------------------------------------------------------------


class Color(enum.StrEnum):
    RED = "red"
    GREEN = "green"


UserId = NewType("UserId", int)


@dataclasses.dataclass
class Node:
    """A tree."""

    name: str
    children: list[Node] = dataclasses.field(default_factory=list)
    parent: Node | None = None


class Point(NamedTuple):
    x: float
    y: float


class Partial(TypedDict, total=False):
    a: int
    b: typing.Required[str]


@pytest.mark.parametrize(
    ("tp", "schema"),
    [
        (int, {"type": "integer"}),
        (bool, {"type": "boolean"}),
        (float, {"type": "number"}),
        (str, {"type": "string"}),
        (bytes, {"type": "string", "contentEncoding": "base64"}),
        (Any, {}),
        (type(None), {"type": "null"}),
        (datetime.date, {"type": "string", "format": "date"}),
        (datetime.time, {"type": "string", "format": "time"}),
        (datetime.timedelta, {"type": "string", "format": "duration"}),
        (uuid.UUID, {"type": "string", "format": "uuid"}),
        (decimal.Decimal, {"type": "string", "format": "decimal"}),
        (list[int], {"type": "array", "items": {"type": "integer"}}),
        (Sequence[str], {"type": "array", "items": {"type": "string"}}),
        (set[int], {"type": "array", "items": {"type": "integer"}, "uniqueItems": True}),
        (frozenset[str], {"type": "array", "items": {"type": "string"}, "uniqueItems": True}),
        (tuple[int, ...], {"type": "array", "items": {"type": "integer"}}),
        (
            tuple[int, str],
            {
                "type": "array",
                "items": [{"type": "integer"}, {"type": "string"}],
                "minItems": 2,
                "maxItems": 2,
                "additionalItems": False,
            },
        ),
        (dict[str, float], {"type": "object", "additionalProperties": {"type": "number"}}),
        (dict, {"type": "object"}),
        (list, {"type": "array"}),
        (Optional[int], {"type": ["integer", "null"]}),  # noqa: UP045
        (int | str, {"anyOf": [{"type": "integer"}, {"type": "string"}]}),
        (
            int | str | None,
            {"anyOf": [{"type": "integer"}, {"type": "string"}, {"type": "null"}]},
        ),
        (Literal["a", "b"], {"type": "string", "enum": ["a", "b"]}),
        (Literal[1, "a"], {"enum": [1, "a"]}),
        (typing.Annotated[int, "meta"], {"type": "integer"}),
        (UserId, {"type": "integer"}),
    ],
)
def test_schemas_of_plain_types(tp: Any, schema: dict[str, Any]) -> None:
    schemas = Schemas()
    assert schemas.of(tp) == schema
    assert schemas.components == {}


def test_enums_and_their_use_as_keys() -> None:
    schemas = Schemas()
    assert schemas.of(dict[Color, int]) == {
        "type": "object",
        "additionalProperties": {"type": "integer"},
        "propertyNames": {"$ref": "#/components/schemas/Color"},
    }
    assert schemas.components["Color"]["enum"] == ["red", "green"]
    assert schemas.of(Color) == {"$ref": "#/components/schemas/Color"}
    assert list(schemas.components) == ["Color"]
    assert schemas.of(dict[Literal["a", "b"], int])["propertyNames"] == {
        "type": "string",
        "enum": ["a", "b"],
    }
    # JSON keys are strings: an int enum's values cannot name them.
    assert "propertyNames" not in schemas.of(dict[Size, int])


def test_a_recursive_dataclass_refers_to_itself() -> None:
    schemas = Schemas()
    assert schemas.of(Node) == {"$ref": "#/components/schemas/Node"}
    node = schemas.components["Node"]
    assert node["properties"]["children"] == {
        "type": "array",
        "items": {"$ref": "#/components/schemas/Node"},
    }
    assert node["properties"]["parent"] == {
        "anyOf": [{"$ref": "#/components/schemas/Node"}, {"type": "null"}],
        "default": None,
    }
    assert node["required"] == ["name"]
    assert node["description"] == "A tree."


def test_two_types_of_one_name_get_two_schemas() -> None:
    def make(module: str) -> type:
        namespace = types.ModuleType(module)
        cls = dataclasses.make_dataclass("Order", [("id", int)], namespace={"__module__": module})
        namespace.Order = cls  # type: ignore[attr-defined]
        return cls

    first, second = make("shop.orders"), make("billing.orders")
    schemas = Schemas()
    assert schemas.of(first) == {"$ref": "#/components/schemas/Order"}
    assert schemas.of(second) == {"$ref": "#/components/schemas/billing.orders.Order"}
    assert schemas.of(first) == {"$ref": "#/components/schemas/Order"}


def test_namedtuple_typeddict_and_undocumented_dataclass() -> None:
    schemas = Schemas()
    schemas.of(Point)
    assert schemas.components["Point"] == {
        "type": "array",
        "items": [{"type": "number"}, {"type": "number"}],
        "minItems": 2,
        "maxItems": 2,
        "additionalItems": False,
        "title": "Point",
        "x-fields": ["x", "y"],
    }
    schemas.of(Partial)
    assert schemas.components["Partial"]["required"] == ["b"]

    @dataclasses.dataclass
    class Bare:
        n: int

    schemas.of(Bare)
    # The docstring dataclasses write ("Bare(n: int)") says nothing: it is left out.
    assert "description" not in schemas.components["Bare"]


def test_an_unknown_class_is_named_not_guessed() -> None:
    class Opaque:
        pass

    assert Schemas().of(Opaque) == {"x-python-type": f"{__name__}.{Opaque.__qualname__}"}


# pydantic (optional) ---------------------------------------------------------------------


def test_pydantic_models_through_their_own_json_schema(address: str) -> None:
    need("pydantic")
    from _asyncapi_pydantic import Address, Customer, Invoice, on_invoice

    schemas = Schemas()
    assert schemas.of(Invoice) == {"$ref": "#/components/schemas/Invoice"}
    # Customer and Address came in through Invoice's $defs; using them again reuses them.
    assert schemas.of(Address) == {"$ref": "#/components/schemas/Address"}
    assert schemas.of(Customer) == {"$ref": "#/components/schemas/Customer"}
    assert sorted(schemas.components) == ["Address", "Customer", "Invoice"]
    customer = schemas.components["Customer"]
    assert customer["description"] == "Who buys."
    assert customer["properties"]["home"] == {"$ref": "#/components/schemas/Address"}
    assert set(customer["required"]) >= {"id", "since", "balance", "home"}
    text = json.dumps(schemas.components)
    assert "#/$defs/" not in text

    # What the JSON codec writes for a model validates against the schema.
    service = memory_service("crm", address)
    service.server.subscribe(service.server.new_subscriber("invoices", on_invoice))
    doc = asyncapi.document(service)
    assert asyncapi_rules.problems(doc) == []
    payload = asyncapi_rules.deref(doc, doc["operations"]["on_invoice"]["messages"][0])["payload"]
    home = Address(street="1 rue Lepic")
    invoice = Invoice(
        customer=Customer(
            id=uuid.uuid4(),
            since=datetime.datetime(2024, 5, 1, tzinfo=datetime.UTC),
            balance=decimal.Decimal("12.50"),
            home=home,
            referrer=Customer(
                id=uuid.uuid4(),
                since=datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC),
                balance=decimal.Decimal(0),
                home=home,
            ),
        ),
        billed_to=home,
    )
    body = json.loads(codecs.JsonCodec().encode(invoice))
    validator = payload_validator(doc, payload)
    assert list(validator.iter_errors(body)) == []
    del body["customer"]["home"]
    assert list(validator.iter_errors(body)) != []


def test_pydantic_recursive_model() -> None:
    need("pydantic")
    from _asyncapi_pydantic import Category

    schemas = Schemas()
    assert schemas.of(Category) == {"$ref": "#/components/schemas/Category"}
    parent = schemas.components["Category"]["properties"]["parent"]
    assert {"$ref": "#/components/schemas/Category"} in parent["anyOf"]


def test_pydantic_is_not_imported_by_the_core() -> None:
    # pydantic is optional: generating a document of dataclasses must not need it.
    code = (
        "import sys, microbroker.asyncapi as a; from support import asyncapi_shop as s; "
        "a.document(s.service); print('pydantic' in sys.modules)"
    )
    import subprocess

    tests = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tests, check=True
    )
    assert out.stdout.strip() == "False"


# What travels validates against the document -----------------------------------------


class Size(enum.IntEnum):
    S = 1
    M = 2


@dataclasses.dataclass
class Line:
    sku: str
    quantity: int
    size: Size = Size.M
    tags: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Cart:
    id: str
    lines: list[Line]
    coupon: str | None = None
    extra: dict[str, float] = dataclasses.field(default_factory=dict)
    color: Color = Color.RED


async def test_published_bodies_validate_against_the_subscribers_document(address: str) -> None:
    received = Inbox()
    consumer = memory_service("carts", address)

    @consumer.subscriber("carts")
    async def on_cart(cart: Cart) -> None:
        pass

    # A raw subscriber beside it sees the bytes the typed one decodes.
    await consumer.broker.connect()
    await consumer.broker.subscribe("carts", received)
    doc = asyncapi.document(consumer)
    assert asyncapi_rules.problems(doc) == []
    payload = asyncapi_rules.deref(doc, doc["operations"]["on_cart"]["messages"][0])["payload"]
    validator = payload_validator(doc, payload)

    producer = microbroker.Service(
        "checkout", broker=microbroker.get_broker("memory", address=address)
    )
    carts = producer.event("carts")
    sent = [
        Cart(id="c1", lines=[Line(sku="a", quantity=2)]),
        Cart(
            id="c2",
            lines=[Line(sku="b", quantity=1, size=Size.S, tags=["gift"])],
            coupon="SPRING",
            extra={"tip": 1.5},
            color=Color.GREEN,
        ),
    ]
    async with producer:
        for cart in sent:
            await carts.publish(cart)
        await wait_until(lambda: len(received.deliveries) == len(sent))
    try:
        for delivery in received.deliveries:
            body = json.loads(delivery.body)
            assert list(validator.iter_errors(body)) == [], body
        # The schema is not vacuous: a body missing a required field does not validate.
        broken = json.loads(received.deliveries[0].body)
        del broken["lines"][0]["sku"]
        assert [error.message for error in validator.iter_errors(broken)] == [
            "'sku' is a required property"
        ]
    finally:
        await consumer.broker.disconnect()


# protobuf details --------------------------------------------------------------------


def test_proto2_required_fields_and_groups_of_scalars() -> None:
    F = descriptor_pb2.FieldDescriptorProto
    pool = descriptor_pool.DescriptorPool()
    file = descriptor_pb2.FileDescriptorProto(
        name="microbroker_tests/legacy.proto", package="legacy", syntax="proto2"
    )
    msg = file.message_type.add(name="Reading")
    msg.field.add(name="sensor", number=1, type=F.TYPE_STRING, label=F.LABEL_REQUIRED)
    msg.field.add(name="value", number=2, type=F.TYPE_SINT64, label=F.LABEL_OPTIONAL)
    msg.field.add(name="raw", number=3, type=F.TYPE_BYTES, label=F.LABEL_OPTIONAL)
    msg.field.add(name="flags", number=4, type=F.TYPE_FIXED32, label=F.LABEL_REPEATED)
    pool.Add(file)
    reading = message_factory.GetMessageClass(pool.FindMessageTypeByName("legacy.Reading"))
    schemas = Schemas()
    assert schemas.of(reading) == {"$ref": "#/components/schemas/legacy.Reading"}
    schema = schemas.components["legacy.Reading"]
    assert schema["required"] == ["sensor"]
    props = schema["properties"]
    assert props["value"]["x-protobuf-type"] == "sint64"
    assert props["value"]["type"] == "integer"
    assert props["raw"]["contentEncoding"] == "base64"
    assert props["flags"] == {
        "type": "array",
        "items": {
            "type": "integer",
            "format": "uint32",
            "minimum": 0,
            "x-protobuf-type": "fixed32",
        },
        "x-protobuf-number": 4,
    }


# The page -----------------------------------------------------------------------------


def _inline(html: str, tag: str) -> str:
    match = re.search(rf"<{tag}>(.*?)</{tag}>", html, re.S)
    assert match is not None, tag
    return match.group(1)


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def test_the_page_allows_its_own_script_and_style_and_nothing_else(shop: dict[str, Any]) -> None:
    html = asyncapi.page(shop)
    csp = asyncapi.content_security_policy()
    assert f'http-equiv="Content-Security-Policy" content="{csp}"' in html.replace("&#x27;", "'")
    assert "default-src 'none'" in csp
    # The hashes are those of the inline script and style as written in the page: were they
    # not, the browser would refuse to run the renderer (tests/cli/test_docs_page.py runs it).
    assert f"script-src {_sha256(_inline(html, 'script'))};" in csp
    assert f"style-src {_sha256(_inline(html, 'style'))};" in csp
    assert "unsafe" not in csp


def test_the_page_embeds_the_document_so_that_no_text_ends_its_script(address: str) -> None:
    service = memory_service("</script><script>alert(1)</script>", address)

    @service.subscriber("t")
    async def handler(body: int) -> None:
        """Ends </script> here, & <!-- there \u2028."""

    doc = asyncapi.document(service)
    html = asyncapi.page(doc)
    embedded = re.search(
        r'<script type="application/json" id="asyncapi-document">(.*?)</script>', html, re.S
    )
    assert embedded is not None
    assert "<" not in embedded.group(1)
    assert json.loads(embedded.group(1)) == doc
    assert html.count("</script>") == 2  # the JSON's and the renderer's, nothing else
    assert "<title>&lt;/script&gt;" in html


def test_protobuf_well_known_types_as_their_json_mapping() -> None:
    from google.protobuf import any_pb2, duration_pb2, struct_pb2, wrappers_pb2

    F = descriptor_pb2.FieldDescriptorProto
    pool = descriptor_pool.DescriptorPool()
    for module in (any_pb2, duration_pb2, struct_pb2, wrappers_pb2):
        pool.AddSerializedFile(module.DESCRIPTOR.serialized_pb)
    file = descriptor_pb2.FileDescriptorProto(
        name="microbroker_tests/known.proto",
        package="known",
        syntax="proto3",
        dependency=[
            "google/protobuf/any.proto",
            "google/protobuf/duration.proto",
            "google/protobuf/struct.proto",
            "google/protobuf/wrappers.proto",
        ],
    )
    msg = file.message_type.add(name="Job")
    for number, (name, type_name) in enumerate(
        [
            ("timeout", "Duration"),
            ("retries", "Int64Value"),
            ("label", "StringValue"),
            ("settings", "Struct"),
            ("detail", "Any"),
            ("anything", "Value"),
        ],
        start=1,
    ):
        msg.field.add(
            name=name, number=number, type=F.TYPE_MESSAGE, type_name=f".google.protobuf.{type_name}"
        )
    pool.Add(file)
    job = message_factory.GetMessageClass(pool.FindMessageTypeByName("known.Job"))
    schemas = Schemas()
    schemas.of(job)
    props = schemas.components["known.Job"]["properties"]
    assert props["timeout"]["type"] == "string"
    assert re.fullmatch(props["timeout"]["pattern"], "1.5s")
    assert props["retries"]["type"] == "integer"
    assert props["retries"]["x-protobuf-type"] == "google.protobuf.Int64Value"
    assert props["label"]["type"] == "string"
    assert props["settings"]["type"] == "object"
    assert props["detail"]["required"] == ["@type"]
    assert set(props["anything"]) == {"x-protobuf-type", "x-protobuf-number"}
    # Well-known types are written inline, not as schemas of their own.
    assert list(schemas.components) == ["known.Job"]
