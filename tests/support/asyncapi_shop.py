"""A sample service whose AsyncAPI document the tests generate, check and show in a browser.

Its payloads cover what the schema derivation handles: dataclasses (nested, in
lists and dicts, Optional fields, defaults), enums, datetime, UUID, Decimal, a
TypedDict, a protobuf message (nested messages, an enum, repeated fields, a
map, a oneof, a well-known type), a raw subscriber; two queue groups and two
Events.

    cd tests && microbroker docs support.asyncapi_shop:service
"""

from __future__ import annotations

import dataclasses
import enum
from datetime import datetime
from decimal import Decimal
from typing import Any, NotRequired, Optional, TypedDict
from uuid import UUID

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, timestamp_pb2

import microbroker


class Status(enum.Enum):
    """Where an order is in its life."""

    PLACED = "placed"
    PAID = "paid"
    SHIPPED = "shipped"


class Priority(enum.IntEnum):
    LOW = 1
    HIGH = 2


@dataclasses.dataclass
class Money:
    amount: Decimal
    currency: str = "EUR"


@dataclasses.dataclass
class OrderLine:
    sku: str
    quantity: int
    price: Money


@dataclasses.dataclass
class OrderPlaced:
    """An order, as the checkout places it."""

    id: UUID
    customer: str
    lines: list[OrderLine]
    placed_at: datetime
    status: Status = Status.PLACED
    note: str | None = None
    attributes: dict[str, str] = dataclasses.field(default_factory=dict)
    priority: Optional[Priority] = None  # noqa: UP045 - the typing.Optional spelling
    totals: dict[str, Money] = dataclasses.field(
        default_factory=dict, metadata={"description": "per currency"}
    )


class Refund(TypedDict):
    order_id: str
    amount: float
    reason: NotRequired[str]


def _shipment_types() -> tuple[Any, Any]:
    """protobuf message classes from a descriptor made here (no protoc, a private pool)."""
    F = descriptor_pb2.FieldDescriptorProto
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(timestamp_pb2.DESCRIPTOR.serialized_pb)
    file = descriptor_pb2.FileDescriptorProto(
        name="microbroker_tests/shop.proto",
        package="shop.v1",
        syntax="proto3",
        dependency=["google/protobuf/timestamp.proto"],
    )
    carrier = file.enum_type.add(name="Carrier")
    for number, name in enumerate(("CARRIER_UNSPECIFIED", "POST", "COURIER")):
        carrier.value.add(name=name, number=number)
    address = file.message_type.add(name="Address")
    address.field.add(name="street", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    address.field.add(name="city", number=2, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    parcel = file.message_type.add(name="Parcel")
    parcel.field.add(name="weight_kg", number=1, type=F.TYPE_DOUBLE, label=F.LABEL_OPTIONAL)
    parcel.field.add(name="items", number=2, type=F.TYPE_STRING, label=F.LABEL_REPEATED)
    shipment = file.message_type.add(name="Shipment")
    entry = shipment.nested_type.add(name="LabelsEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    entry.field.add(name="value", number=2, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    shipment.oneof_decl.add(name="destination")
    shipment.oneof_decl.add(name="_note")  # proto3 `optional string note`
    add = shipment.field.add
    add(name="order_id", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    add(name="carrier", number=2, type=F.TYPE_ENUM, type_name=".shop.v1.Carrier")
    add(
        name="parcels",
        number=3,
        type=F.TYPE_MESSAGE,
        type_name=".shop.v1.Parcel",
        label=F.LABEL_REPEATED,
    )
    add(
        name="labels",
        number=4,
        type=F.TYPE_MESSAGE,
        type_name=".shop.v1.Shipment.LabelsEntry",
        label=F.LABEL_REPEATED,
    )
    add(
        name="shipped_at",
        number=5,
        type=F.TYPE_MESSAGE,
        type_name=".google.protobuf.Timestamp",
    )
    add(name="locker", number=6, type=F.TYPE_STRING, oneof_index=0)
    add(name="address", number=7, type=F.TYPE_MESSAGE, type_name=".shop.v1.Address", oneof_index=0)
    add(name="note", number=8, type=F.TYPE_STRING, oneof_index=1, proto3_optional=True)
    add(name="weight_grams", number=9, type=F.TYPE_UINT64)
    pool.Add(file)
    get = message_factory.GetMessageClass
    return get(pool.FindMessageTypeByName("shop.v1.Shipment")), get(
        pool.FindMessageTypeByName("shop.v1.Parcel")
    )


Shipment, Parcel = _shipment_types()

service = microbroker.Service("shop")


@service.subscriber("orders.placed", queue="billing")
async def bill(order: OrderPlaced, ctx: microbroker.Context) -> None:
    """Charge the customer for a placed order.

    Runs in the billing queue group: one instance bills each order.
    """


@service.subscriber("orders.placed")
async def audit(order: OrderPlaced) -> None:
    """Every instance keeps its own audit trail."""


@service.subscriber("refunds.requested")
async def refund(request: Refund) -> None:
    """Refund an order, in part or in full."""


@service.subscriber("shipments", queue="warehouse")
async def ship(shipment: Shipment) -> None:  # type: ignore[valid-type]
    """Hand a shipment to its carrier."""


@service.subscriber("audit.raw")
async def tap(message: microbroker.Message) -> None:
    """Keeps raw bodies, whatever their content type."""


order_paid = service.event("orders.paid")
invoices = service.event("invoices.issued", content_type="application/json")
