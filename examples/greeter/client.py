"""A client of the greeter: a call, a server stream and a bidirectional stream, then it exits.

python examples/greeter/client.py              # with service.py running on the same broker
"""

from __future__ import annotations

import asyncio

from google.protobuf import wrappers_pb2
from greeter import SERVICE, HelloReply, HelloRequest

import microbroker


async def talk(client: microbroker.Client) -> None:
    """Every kind of call the greeter offers."""
    # The call form of DESIGN.md: service, endpoint, request, response type.
    reply = await client.call(SERVICE, "Greeter.Hello", HelloRequest(name="Ada"), HelloReply)
    print(reply.message)

    # go-micro's form: NewRequest then Call, with metadata and a deadline.
    request = client.new_request(SERVICE, "Greeter.Hello", HelloRequest(name="Grace"))
    reply = await client.call(request, HelloReply, metadata={"language": "fr"}, timeout=2.0)
    print(reply.message)

    try:
        await client.call(SERVICE, "Greeter.Hello", HelloRequest(name=""), HelloReply)
    except microbroker.RpcError as exc:
        print(f"error {exc.code} {exc.status}: {exc.detail}")

    countdown = client.new_request(SERVICE, "Greeter.Countdown", wrappers_pb2.Int32Value(value=3))
    async with await client.stream(countdown, wrappers_pb2.Int32Value) as stream:
        print("countdown:", [step.value async for step in stream])

    async with await client.stream(client.new_request(SERVICE, "Greeter.Chat", None), str) as chat:
        for line in ("hi", "how are you?"):
            await chat.send(line)
            print(await chat.recv())
        await chat.close_send()


async def main() -> None:
    broker = microbroker.get_broker()
    async with broker:
        await talk(microbroker.Client(broker))


if __name__ == "__main__":
    asyncio.run(main())
