"""Protobuf message classes built at run time, without protoc (a descriptor and message_factory)."""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto


def _build() -> tuple[Any, Any]:
    file = descriptor_pb2.FileDescriptorProto(
        name="microbroker_tests/orders.proto", package="microbroker_tests", syntax="proto3"
    )
    order = file.message_type.add(name="OrderCreated")
    order.field.add(name="id", number=1, type=_F.TYPE_INT64, label=_F.LABEL_OPTIONAL)
    order.field.add(name="item", number=2, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL)
    order.field.add(name="payload", number=3, type=_F.TYPE_BYTES, label=_F.LABEL_OPTIONAL)
    order.field.add(name="tags", number=4, type=_F.TYPE_STRING, label=_F.LABEL_REPEATED)
    cancelled = file.message_type.add(name="OrderCancelled")
    cancelled.field.add(name="reason", number=1, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return (
        message_factory.GetMessageClass(
            pool.FindMessageTypeByName("microbroker_tests.OrderCreated")
        ),
        message_factory.GetMessageClass(
            pool.FindMessageTypeByName("microbroker_tests.OrderCancelled")
        ),
    )


OrderCreated, OrderCancelled = _build()
