"""What typed JSON payloads cost: decode and encode per message, and a typed delivery.

Cases (each the best of ``--rounds`` timeit repeats, in ns of CPU time per message):

- decode a JSON body into ``Flat`` (four scalar fields: the common case) and
  into ``Order`` (four fields, one of them a nested dataclass):
  ``before`` is the JSON codec as it was (``json.loads`` and
  ``into(**{known fields})``: no validation, a nested dataclass stays a dict),
  ``by hand`` builds the object from ``json.loads`` field by field (the floor
  for pure Python), ``microbroker`` is ``JsonCodec.decode`` now (validated and
  converted), and, when installed, ``msgspec`` (``msgspec.json.Decoder(T)``)
  and ``pydantic`` (``TypeAdapter(T).validate_json``);
- encode the same values: ``before`` is ``json.dumps(dataclasses.asdict(v))``;
- ``e2e``: a typed delivery through a Service on the memory broker
  (``event.publish(Flat(...))`` -> a subscriber annotated ``Flat``; and the same
  with a 128-byte protobuf ``BytesValue``), in us of CPU time per message. It
  uses only public names, so it runs on an older checkout too:
  ``PYTHONPATH=<old core/src> python benchmarks/typed_payloads.py --e2e``.
- the installed size of msgspec and of pydantic with what it pulls in.

Run: ``python benchmarks/typed_payloads.py [--rounds R] [--e2e]``
(``pip install msgspec pydantic`` first for their columns).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import importlib.metadata
import itertools
import json
import sys
import time
import timeit
from collections.abc import Callable
from typing import Any

from google.protobuf import wrappers_pb2

import microbroker
from microbroker import codecs


@dataclasses.dataclass
class Flat:
    id: int
    item: str
    price: float
    paid: bool


@dataclasses.dataclass
class Customer:
    name: str
    email: str


@dataclasses.dataclass
class Order:
    id: int
    item: str
    price: float
    customer: Customer


FLAT = Flat(42, "book", 12.5, True)
ORDER = Order(42, "book", 12.5, Customer("Ada", "ada@example.com"))
BODIES: dict[type, bytes] = {
    Flat: json.dumps(dataclasses.asdict(FLAT)).encode(),
    Order: json.dumps(dataclasses.asdict(ORDER)).encode(),
}
VALUES: dict[type, Any] = {Flat: FLAT, Order: ORDER}


def before_decode(data: bytes, into: Any) -> Any:
    """JsonCodec.decode for a dataclass before typed payloads (commit ee48949)."""
    value = json.loads(data)
    if not isinstance(value, dict):
        raise TypeError(f"expected a JSON object for {into.__qualname__}")
    names = {f.name for f in dataclasses.fields(into) if f.init}
    return into(**{key: item for key, item in value.items() if key in names})


def before_encode(value: Any) -> bytes:
    return json.dumps(dataclasses.asdict(value), separators=(",", ":"), ensure_ascii=False).encode()


def by_hand(data: bytes, into: Any) -> Any:
    """What a careful user writes without a library (checks left out)."""
    d = json.loads(data)
    if into is Flat:
        return Flat(id=d["id"], item=d["item"], price=d["price"], paid=d["paid"])
    c = d["customer"]
    return Order(
        id=d["id"],
        item=d["item"],
        price=d["price"],
        customer=Customer(name=c["name"], email=c["email"]),
    )


def decoders() -> dict[str, Callable[[type], Callable[[bytes], Any]]]:
    json_codec = codecs.get_codec(codecs.JSON)
    found: dict[str, Callable[[type], Callable[[bytes], Any]]] = {
        "before": lambda t: lambda data: before_decode(data, t),
        "by hand": lambda t: lambda data: by_hand(data, t),
        "microbroker": lambda t: lambda data: json_codec.decode(data, t),
    }
    try:
        import msgspec
    except ImportError:
        pass
    else:
        found["msgspec"] = lambda t: msgspec.json.Decoder(t).decode
    try:
        import pydantic
    except ImportError:
        pass
    else:
        found["pydantic"] = lambda t: pydantic.TypeAdapter(t).validate_json
    return found


def encoders() -> dict[str, Callable[[type], Callable[[Any], bytes]]]:
    json_codec = codecs.get_codec(codecs.JSON)
    found: dict[str, Callable[[type], Callable[[Any], bytes]]] = {
        "before": lambda t: before_encode,
        "microbroker": lambda t: json_codec.encode,
    }
    try:
        import msgspec
    except ImportError:
        pass
    else:
        found["msgspec"] = lambda t: msgspec.json.Encoder().encode
    try:
        import pydantic
    except ImportError:
        pass
    else:
        found["pydantic"] = lambda t: pydantic.TypeAdapter(t).dump_json
    return found


def best_ns(call: Callable[[], Any], rounds: int, number: int = 20_000) -> float:
    """The best of ``rounds`` repeats, in ns of this process's CPU time per call (the
    machine is shared: CPU time leaves out the time other processes had the core)."""
    times = timeit.repeat(call, number=number, repeat=rounds, timer=time.process_time)
    return min(times) / number * 1e9


def check(name: str, decoded: Any, expected: Any) -> None:
    if decoded != expected and name != "before":  # before leaves the nested dataclass a dict
        raise AssertionError(f"{name} decoded {decoded!r}, not {expected!r}")


def measure_codecs(rounds: int) -> list[tuple[str, str, str, float]]:
    rows = []
    for kind in (Flat, Order):
        data = BODIES[kind]
        for name, make in decoders().items():
            decode = make(kind)
            check(name, decode(data), VALUES[kind])
            call = functools.partial(decode, data)
            rows.append(("decode", kind.__name__, name, best_ns(call, rounds)))
        value = VALUES[kind]
        for name, make in encoders().items():
            encode = make(kind)
            assert json.loads(encode(value)) == json.loads(BODIES[kind]), name
            call = functools.partial(encode, value)
            rows.append(("encode", kind.__name__, name, best_ns(call, rounds)))
    return rows


_buses = itertools.count()


async def typed_delivery(messages: int, body: str) -> float:
    """us per message: events published to a typed subscriber on the memory broker, a Flat
    dataclass (JSON) or a protobuf BytesValue of 128 bytes (the body docs/benchmarks.md's
    typed-delivery numbers use)."""
    broker = microbroker.get_broker("memory", address=f"typed-bench-{next(_buses)}")
    service = microbroker.Service("typed-bench", broker=broker)
    done = asyncio.get_running_loop().create_future()
    seen = 0

    async def count(message: Any) -> None:
        nonlocal seen
        seen += 1
        if seen == messages and not done.done():
            done.set_result(None)

    if body == "json":
        count.__annotations__["message"] = Flat
        make: Callable[[int], Any] = lambda i: Flat(i, "book", 12.5, True)  # noqa: E731
    else:
        count.__annotations__["message"] = wrappers_pb2.BytesValue
        payload = bytes(128)
        make = lambda i: wrappers_pb2.BytesValue(value=payload)  # noqa: E731
    service.server.subscribe(service.server.new_subscriber("typed", count))
    async with service:
        event = service.event("typed")
        start = time.process_time()  # publisher and subscriber are this one process
        for i in range(messages):
            await event.publish(make(i))
        await asyncio.wait_for(done, 120)
        return (time.process_time() - start) / messages * 1e6


def measure_e2e(rounds: int, messages: int, body: str) -> float:
    return min(asyncio.run(typed_delivery(messages, body)) for _ in range(rounds))


def installed_size(names: list[str]) -> str:
    total = 0
    for name in names:
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"
        for file in dist.files or ():
            with contextlib.suppress(OSError):
                total += file.locate().stat().st_size  # type: ignore[attr-defined]
    return f"{total / 1e6:.1f} MB"


FOOTPRINTS = {
    "msgspec": ["msgspec"],
    "pydantic": [
        "pydantic",
        "pydantic-core",
        "annotated-types",
        "typing-inspection",
        "typing-extensions",
    ],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--messages", type=int, default=50_000, help="per e2e round")
    parser.add_argument("--e2e", action="store_true", help="only the typed delivery")
    args = parser.parse_args()
    print(f"Python {sys.version.split()[0]}, best of {args.rounds}")
    if not args.e2e:
        print("\n| op | type | variant | ns per message |\n| --- | --- | --- | ---: |")
        for op, kind, name, ns in measure_codecs(args.rounds):
            print(f"| {op} | {kind} | {name} | {ns:,.0f} |")
        print("\n| library | installed size |\n| --- | ---: |")
        for library, names in FOOTPRINTS.items():
            print(f"| {library} ({', '.join(names)}) | {installed_size(names)} |")
    print()
    for body, what in (("json", "Flat (JSON)"), ("protobuf", "BytesValue (protobuf)")):
        e2e = measure_e2e(args.rounds, args.messages, body)
        print(f"e2e typed delivery of {what} on the memory broker: {e2e:.2f} us per message")


if __name__ == "__main__":
    main()
