"""The RPC wire protocol as another implementation sees it: topics, headers, deadlines."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from _helpers import Inbox, quiesce

import microbroker
from microbroker import Message, Service


class Echo:
    def __init__(self) -> None:
        self.calls = 0

    async def Say(self, request: dict[str, Any]) -> dict[str, Any]:
        self.calls += 1
        return {"said": request["text"]}

    async def Fail(self, request: dict[str, Any]) -> dict[str, Any]:
        raise KeyError("missing")


@pytest.fixture
async def echo(broker: microbroker.Broker) -> AsyncIterator[Echo]:
    echo = Echo()
    service = Service("echo", broker=broker)
    service.handle(echo)
    async with service:
        yield echo


def request(endpoint: str, body: bytes, **extra: str) -> Message:
    return Message(
        body,
        {
            "Content-Type": "application/json",
            "Micro-Service": "echo",
            "Micro-Endpoint": endpoint,
            "Micro-Id": "req-1",
            "Micro-Reply-To": "replies.mine",
            **extra,
        },
    )


async def test_a_request_published_by_hand_is_answered_on_its_reply_topic(
    broker: microbroker.Broker, echo: Echo
) -> None:
    replies = Inbox()
    await broker.subscribe("replies.mine", replies)
    await broker.publish("micro.rpc.echo", request("Echo.Say", b'{"text": "hi"}'))
    (reply,) = await replies.wait_for(1)
    assert json.loads(reply.message.body) == {"said": "hi"}
    assert reply.message.header("micro-id") == "req-1", "the reply echoes the request's Micro-Id"
    assert reply.message.header("content-type") == "application/json"
    assert reply.message.header("micro-error") is None


async def test_an_error_travels_in_micro_error_as_go_micro_json(
    broker: microbroker.Broker, echo: Echo
) -> None:
    replies = Inbox()
    await broker.subscribe("replies.mine", replies)
    await broker.publish("micro.rpc.echo", request("Echo.Fail", b"{}"))
    (reply,) = await replies.wait_for(1)
    assert reply.message.body == b""
    error = json.loads(reply.message.header("Micro-Error") or "")
    assert error == {
        "id": "echo",
        "code": 500,
        "detail": "KeyError: 'missing'",
        "status": "Internal Server Error",
    }


async def test_work_whose_deadline_passed_is_dropped(
    broker: microbroker.Broker, echo: Echo
) -> None:
    replies = Inbox()
    await broker.subscribe("replies.mine", replies)
    past = f"{time.time() - 1:.6f}"
    await broker.publish(
        "micro.rpc.echo", request("Echo.Say", b'{"text": "late"}', **{"Micro-Deadline": past})
    )
    future = f"{time.time() + 60:.6f}"
    await broker.publish(
        "micro.rpc.echo", request("Echo.Say", b'{"text": "on time"}', **{"Micro-Deadline": future})
    )
    (reply,) = await replies.wait_for(1)
    await quiesce()
    assert json.loads(reply.message.body) == {"said": "on time"}
    assert len(replies) == 1
    assert echo.calls == 1, "the expired request must not reach the handler"


async def test_the_client_sends_go_micro_headers_and_a_deadline(
    broker: microbroker.Broker,
) -> None:
    seen = Inbox()
    await broker.subscribe("micro.rpc.spy", seen, queue="spy")
    client = microbroker.Client(broker)
    call = asyncio.ensure_future(
        client.call("spy", "Spy.Look", {"a": 1}, dict, timeout=30, metadata={"Tenant": "t"})
    )
    (delivery,) = await seen.wait_for(1)
    call.cancel()
    message = delivery.message
    assert message.header("Micro-Service") == "spy"
    assert message.header("Micro-Endpoint") == "Spy.Look"
    assert message.header("Micro-Method") == "Spy.Look"
    assert message.header("Micro-Id")
    assert message.header("Content-Type") == "application/json"
    assert message.header("Micro-Reply-To", "").startswith("micro.inbox.")
    assert message.header("Tenant") == "t"
    deadline = float(message.header("Micro-Deadline") or 0)
    assert time.time() < deadline <= time.time() + 30
    assert json.loads(message.body) == {"a": 1}


async def test_metadata_cannot_override_protocol_headers(broker: microbroker.Broker) -> None:
    seen = Inbox()
    await broker.subscribe("micro.rpc.spy2", seen, queue="spy2")
    client = microbroker.Client(broker)
    call = asyncio.ensure_future(
        client.call(
            "spy2",
            "Spy.Look",
            {},
            dict,
            metadata={"micro-reply-to": "elsewhere", "MICRO-ENDPOINT": "Other.Thing"},
        )
    )
    (delivery,) = await seen.wait_for(1)
    call.cancel()
    assert delivery.message.header("Micro-Endpoint") == "Spy.Look"
    assert delivery.message.header("Micro-Reply-To") != "elsewhere"
