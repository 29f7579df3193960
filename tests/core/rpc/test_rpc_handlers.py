"""Server.new_handler and Server.handle: which methods become endpoints, and their types."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from google.protobuf import wrappers_pb2

import microbroker
from microbroker import Context, RpcHandler, Server


@dataclass
class Ask:
    question: str


@dataclass
class Answer:
    text: str


class Oracle:
    async def Ask(self, request: Ask) -> Answer:
        return Answer(request.question)

    async def Proto(
        self, request: wrappers_pb2.StringValue, ctx: Context
    ) -> wrappers_pb2.Int64Value:
        return wrappers_pb2.Int64Value(value=len(request.value))

    async def Countdown(self, request: int) -> AsyncIterator[str]:
        yield str(request)

    async def Collect(self, requests: AsyncIterator[Ask]) -> list[str]:
        return [r.question async for r in requests]

    async def Chat(self, requests: AsyncIterator[Ask]) -> AsyncIterator[Answer]:
        async for request in requests:
            yield Answer(request.question)

    def sync_helper(self) -> int:
        return 1

    async def _private(self, request: Ask) -> Answer:
        return Answer("no")


@pytest.fixture
def server() -> Server:
    return Server("oracle", microbroker.get_broker("memory", address="handlers-unused"))


def test_every_public_async_method_is_an_endpoint_named_class_dot_method(server: Server) -> None:
    handler = server.new_handler(Oracle())
    assert isinstance(handler, RpcHandler)
    assert handler.name == "Oracle"
    assert sorted(handler.endpoints) == [
        "Oracle.Ask",
        "Oracle.Chat",
        "Oracle.Collect",
        "Oracle.Countdown",
        "Oracle.Proto",
    ]


def test_request_and_response_types_and_stream_kinds_come_from_annotations(
    server: Server,
) -> None:
    endpoints = server.new_handler(Oracle()).endpoints
    ask = endpoints["Oracle.Ask"]
    assert (ask.request_type, ask.response_type) == (Ask, Answer)
    assert not ask.streaming
    assert not ask.takes_context
    proto = endpoints["Oracle.Proto"]
    assert proto.request_type is wrappers_pb2.StringValue
    assert proto.response_type is wrappers_pb2.Int64Value
    assert proto.takes_context
    countdown = endpoints["Oracle.Countdown"]
    assert (countdown.server_stream, countdown.client_stream) == (True, False)
    assert (countdown.request_type, countdown.response_type) == (int, str)
    collect = endpoints["Oracle.Collect"]
    assert (collect.server_stream, collect.client_stream) == (False, True)
    assert (collect.request_type, collect.response_type) == (Ask, list[str])
    chat = endpoints["Oracle.Chat"]
    assert (chat.server_stream, chat.client_stream) == (True, True)
    assert (chat.request_type, chat.response_type) == (Ask, Answer)


def test_a_handler_can_be_named(server: Server) -> None:
    handler = server.new_handler(Oracle(), name="Sage")
    assert "Sage.Ask" in handler.endpoints


def test_bad_handlers_are_refused_with_a_clear_error(server: Server) -> None:
    with pytest.raises(TypeError, match="instance, not the class"):
        server.new_handler(Oracle)

    class Nothing:
        def sync(self) -> None: ...

    with pytest.raises(TypeError, match="no public async method"):
        server.new_handler(Nothing())

    class TooMany:
        async def M(self, a: int, b: int, c: int) -> int:
            return a

    with pytest.raises(TypeError, match=r"TooMany\.M must take \(request\) or \(request, ctx\)"):
        server.new_handler(TooMany())

    class Unresolved:
        async def M(self, a: NoSuchType) -> int:  # type: ignore[name-defined]  # noqa: F821
            return 1

    with pytest.raises(TypeError, match="cannot resolve the annotations"):
        server.new_handler(Unresolved())


def test_handle_takes_a_handler_and_refuses_duplicate_endpoints(server: Server) -> None:
    with pytest.raises(TypeError, match="new_handler"):
        server.handle(Oracle())  # type: ignore[arg-type]
    server.handle(server.new_handler(Oracle()))
    with pytest.raises(microbroker.MicrobrokerError, match=r"already serves Oracle\.Ask"):
        server.handle(server.new_handler(Oracle()))
    server.handle(server.new_handler(Oracle(), name="Second"))
    assert [h.name for h in server.handlers] == ["Oracle", "Second"]


def test_service_handle_is_sugar_for_server_handle() -> None:
    service = microbroker.Service(
        "oracle", broker=microbroker.get_broker("memory", address="handlers-unused")
    )
    handler = service.handle(Oracle())
    assert service.server.handlers == (handler,)
