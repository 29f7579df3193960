"""Bad input, fuzzed: publish-side problems raise before anything is sent; delivery-side
problems become DecodeError; no subscriber dies and no other message is lost."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass
from typing import Any

import pytest
from google.protobuf import wrappers_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import microbroker
from microbroker import Context, Delivery, InvalidHeader, InvalidTopic, Message, MessageTooLarge
from microbroker.brokers.memory import MemoryBroker
from microbroker.transport import check_headers, header_pairs, header_size

_bus = itertools.count()
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


async def round_trip(topic: str, message: Message, **options: Any) -> list[Delivery]:
    """Publish on a fresh bus; return what a subscriber received (nothing if publish raised)."""
    got: list[Delivery] = []
    async with MemoryBroker(f"fuzz-{next(_bus)}", **options) as broker:

        async def handler(delivery: Delivery) -> None:
            got.append(delivery)

        await broker.subscribe("fuzz", handler)
        try:
            await broker.publish(topic, message)
        finally:
            await asyncio.sleep(0)
            await asyncio.sleep(0)
    return got


@FUZZ
@given(headers=st.dictionaries(st.text(max_size=20), st.text(max_size=200), max_size=6))
def test_any_headers_either_arrive_intact_or_are_refused_before_sending(
    headers: dict[str, str],
) -> None:
    outcome: list[Delivery] | InvalidHeader
    try:
        outcome = asyncio.run(round_trip("fuzz", Message(b"body", dict(headers))))
    except InvalidHeader as exc:
        outcome = exc
    if isinstance(outcome, InvalidHeader):
        assert str(outcome), "the error must say what is wrong"
        return
    got = outcome
    assert len(got) == 1
    assert got[0].message.headers == headers


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        ({"X-Bad": "line\r\nX-Injected: yes"}, "CR, LF or NUL"),
        ({"X-Bad": "nul\0byte"}, "CR, LF or NUL"),
        ({"X Bad": "v"}, "invalid header name"),
        ({"": "v"}, "invalid header name"),
        ({"X-Colon:": "v"}, "invalid header name"),
        ({"X-Surrogate": "\udcff"}, "not valid UTF-8"),
        ({"X-Bytes": b"raw"}, "must be a str"),
        ({1: "v"}, "invalid header name"),
    ],
)
def test_unsafe_headers_are_refused_with_a_clear_message(headers: Any, why: str) -> None:
    with pytest.raises(InvalidHeader, match=why):
        asyncio.run(round_trip("fuzz", Message(b"x", headers)))


@FUZZ
@given(headers=st.dictionaries(st.text(max_size=20), st.text(max_size=200), max_size=6))
def test_header_pairs_encodes_what_check_headers_accepts(headers: dict[str, str]) -> None:
    """Kafka's record headers come from header_pairs, after publish checked them."""
    try:
        check_headers(headers)
    except InvalidHeader:
        return
    assert header_pairs(headers) == [(k, v.encode()) for k, v in headers.items()]


def test_headers_up_to_the_limit_and_non_ascii_text_travel_intact() -> None:
    text = {"X-Text": "naïve façade ✓ 漢字"}
    room = 64 * 1024 - header_size(text) - len("X-Huge")
    headers = {"X-Huge": "v" * room, **text}
    assert header_size(headers) == 64 * 1024, "exactly the default max_header_bytes"
    got = asyncio.run(round_trip("fuzz", Message(b"x", dict(headers))))
    assert got[0].message.headers == headers
    with pytest.raises(MessageTooLarge, match="max_header_bytes of 65536"):
        asyncio.run(round_trip("fuzz", Message(b"x", {**headers, "X-Huge": "v" * (room + 1)})))


def test_too_many_headers_are_refused_with_a_clear_message() -> None:
    exact = {f"X-{i}": "v" for i in range(256)}
    assert (
        len(asyncio.run(round_trip("fuzz", Message(b"x", dict(exact))))[0].message.headers) == 256
    )
    with pytest.raises(
        InvalidHeader, match="257 headers, more than the memory broker's max_headers"
    ):
        asyncio.run(round_trip("fuzz", Message(b"x", {**exact, "X-One-More": "v"})))
    # A broker declaring no limit carries more.
    many = {f"X-{i}": "v" for i in range(1000)}
    got = asyncio.run(round_trip("fuzz", Message(b"x", dict(many)), max_headers=None))
    assert got[0].message.headers == many


@FUZZ
@given(
    most=st.integers(min_value=1, max_value=40),
    most_bytes=st.integers(min_value=1, max_value=600),
    headers=st.dictionaries(
        st.from_regex(r"[A-Za-z0-9-]{1,12}", fullmatch=True),
        st.text(st.characters(codec="utf-8", exclude_categories=["Cc", "Cs"]), max_size=40),
        max_size=48,
    ),
)
def test_header_limits_refuse_exactly_what_is_over_them(
    most: int, most_bytes: int, headers: dict[str, str]
) -> None:
    """Counted as declared: headers by number, bytes by UTF-8 (not characters)."""
    message = Message(b"body", dict(headers))
    options = {"max_headers": most, "max_header_bytes": most_bytes}
    if len(headers) > most:
        with pytest.raises(InvalidHeader, match="max_headers"):
            asyncio.run(round_trip("fuzz", message, **options))
    elif header_size(headers) > most_bytes:
        with pytest.raises(MessageTooLarge, match="max_header_bytes") as refused:
            asyncio.run(round_trip("fuzz", message, **options))
        assert refused.value.size == header_size(headers)
        assert refused.value.limit_name == "max_header_bytes"
    else:
        got = asyncio.run(round_trip("fuzz", message, **options))
        assert got[0].message.headers == headers


@pytest.mark.parametrize("topic", ["", "a\nb", "a\0b", "tab\there", "\x1b[31m", None, b"bytes", 42])
def test_invalid_topics_are_refused_before_sending(topic: Any) -> None:
    with pytest.raises(InvalidTopic):
        asyncio.run(round_trip(topic, Message(b"x")))


def test_wildcards_cannot_be_published_to() -> None:
    for topic in ("orders.*", "orders.>", "*"):
        with pytest.raises(InvalidTopic, match="wildcard"):
            asyncio.run(round_trip(topic, Message(b"x")))


def test_a_body_that_is_not_bytes_is_refused() -> None:
    with pytest.raises(TypeError, match="bytes"):
        asyncio.run(round_trip("fuzz", Message("text", {})))  # type: ignore[arg-type]


@dataclass
class Order:
    id: int
    item: str


class ErrorLog:
    def __init__(self) -> None:
        self.errors: list[BaseException] = []

    @microbroker.hookimpl
    def on_error(self, error: BaseException, delivery: Delivery | None) -> None:
        self.errors.append(error)


CONTENT_TYPES = st.sampled_from(
    [
        "application/protobuf",
        "application/json",
        "APPLICATION/JSON; charset=utf-8",
        "text/plain",
        "application/octet-stream",
        "application/x-unknown",
        "",
        "not a content type",
    ]
)


@FUZZ
@given(
    bodies=st.lists(
        st.tuples(st.binary(max_size=64), st.one_of(st.none(), CONTENT_TYPES)),
        min_size=1,
        max_size=8,
    )
)
def test_malformed_bodies_never_reach_a_handler_nor_kill_a_subscriber(
    bodies: list[tuple[bytes, str | None]],
) -> None:
    asyncio.run(_deliver_garbage_then_good(bodies))


async def _deliver_garbage_then_good(bodies: list[tuple[bytes, str | None]]) -> None:
    log = ErrorLog()
    name = microbroker.register_plugin(log, name=f"fuzz-errors-{id(log)}")
    try:
        # An undecodable message is given up at once (and reported), not looped on.
        broker = MemoryBroker(f"fuzz-{next(_bus)}")
        service = microbroker.Service("fuzz", broker=broker)
        protos: list[wrappers_pb2.StringValue] = []
        orders: list[Order] = []
        raw: list[dict[str, Any]] = []

        @service.subscriber("proto")
        async def on_proto(msg: wrappers_pb2.StringValue) -> None:
            assert isinstance(msg, wrappers_pb2.StringValue)
            protos.append(msg)

        @service.subscriber("order")
        async def on_order(msg: Order, ctx: Context) -> None:
            assert isinstance(msg, Order)
            orders.append(msg)

        @service.subscriber("dict")
        async def on_dict(msg: dict[str, Any]) -> None:
            assert isinstance(msg, dict)
            raw.append(msg)

        async with service:
            for body, content_type in bodies:
                headers = {} if content_type is None else {"Content-Type": content_type}
                for topic in ("proto", "order", "dict"):
                    await broker.publish(topic, Message(body, dict(headers)))
            # After the garbage, good messages on every topic are still handled.
            await service.event("proto").publish(wrappers_pb2.StringValue(value="ok"))
            await service.event("order").publish(Order(1, "book"))
            await service.event("dict").publish({"ok": True})
            for _ in range(200):
                if (
                    any(p.value == "ok" for p in protos)
                    and Order(1, "book") in orders
                    and {"ok": True} in raw
                ):
                    break
                await asyncio.sleep(0.005)
        assert any(p.value == "ok" for p in protos), "the protobuf subscriber died"
        assert Order(1, "book") in orders, "the dataclass subscriber died"
        assert {"ok": True} in raw, "the JSON subscriber died"
        unexpected = [
            e
            for e in log.errors
            if not isinstance(e, microbroker.DecodeError)
            and not (
                isinstance(e, microbroker.GivenUp) and isinstance(e.cause, microbroker.DecodeError)
            )
        ]
        assert not unexpected, f"errors other than DecodeError (and its give-up): {unexpected}"
    finally:
        microbroker.unregister_plugin(name)


async def test_the_headers_of_a_typed_publish_are_checked_as_any_others() -> None:
    """The Client checks what it did not make itself (metadata, a content type it is given);
    a header added to a built message afterwards is checked by publish."""
    async with MemoryBroker(f"typed-headers-{next(_bus)}") as broker:
        service = microbroker.Service("typed-headers", broker=broker)
        event = service.event("orders")
        with pytest.raises(InvalidHeader, match="cannot hold CR, LF or NUL"):
            await event.publish({"id": 1}, metadata={"X-Tenant": "a\r\nX-Injected: yes"})
        with pytest.raises(InvalidHeader, match="invalid header name"):
            await event.publish({"id": 1}, metadata={"bad name": "v"})
        with pytest.raises(InvalidHeader):
            await event.publish({"id": 1}, content_type="application/json;\nX-Injected: yes")
        built = service.client.build_message("orders", {"id": 1}, None, None)
        built.headers["X-Late"] = "a\nb"
        with pytest.raises(InvalidHeader):
            await broker.publish("orders", built)
