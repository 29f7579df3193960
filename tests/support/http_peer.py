"""A process on the default http broker, driven by the http tests: ``python http_peer.py ROLE ...``.

Roles:
  sub TOPIC [--queue Q] [--delay S]      subscribe; print "ready" then one JSON line per delivery
      [--nofile N] [--ttl S] [--log]     with the open-file limit lowered to N (setrlimit in
      [--max-connections N]              this process), registrations of TTL S, logging
                                         configured as an application does (INFO to stderr),
                                         the http broker's max_connections
  pub TOPIC COUNT [--wait] [--confirm]   publish COUNT messages ("0", "1", ...); with --wait,
                                         print "no-subscriber" while nobody listens, then go on
  register NAME                          register a registry node, print "registered", sleep

The registry comes from MICRO_REGISTRY / MICRO_REGISTRY_ADDRESS, as for any application.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys

import microbroker
from microbroker.registries import Node, Service, get_registry


def emit(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def sub(args: argparse.Namespace) -> None:
    if args.nofile:
        import resource

        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (args.nofile, hard))
    if args.log:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    options = {"max_connections": args.max_connections} if args.max_connections else {}
    broker = microbroker.get_broker("http", register_ttl=args.ttl, **options)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)

    async def handler(delivery: microbroker.Delivery) -> None:
        if args.delay:
            await asyncio.sleep(args.delay)
        emit(
            json.dumps(
                {
                    "body": delivery.message.body.decode(),
                    "attempt": delivery.attempt,
                    "topic": delivery.topic,
                }
            )
        )

    async with broker:
        await broker.subscribe(args.topic, handler, queue=args.queue)
        emit("ready")
        await stop.wait()


async def pub(args: argparse.Namespace) -> None:
    async with microbroker.get_broker("http") as broker:
        if args.wait:
            while True:
                try:
                    await broker.publish(args.topic, microbroker.Message(b"0"), confirm=True)
                    break
                except microbroker.PublishError:
                    emit("no-subscriber")
                    await asyncio.sleep(0.05)
            first = 1
        else:
            first = 0
        for i in range(first, args.count):
            await broker.publish(args.topic, microbroker.Message(str(i).encode()))
        emit("published")
    emit("done")


async def register(args: argparse.Namespace) -> None:
    registry = get_registry()
    node = Node(f"{args.name}-node", "127.0.0.1:9", {"topic": args.name})
    await registry.register(Service(args.name, "v1", {}, [node]), ttl=args.ttl)
    emit("registered")
    await asyncio.sleep(3600)


def main() -> None:
    parser = argparse.ArgumentParser()
    roles = parser.add_subparsers(dest="role", required=True)
    s = roles.add_parser("sub")
    s.add_argument("topic")
    s.add_argument("--queue")
    s.add_argument("--delay", type=float, default=0.0)
    s.add_argument("--nofile", type=int, default=0)
    s.add_argument("--ttl", type=float, default=None)
    s.add_argument("--log", action="store_true")
    s.add_argument("--max-connections", type=int, default=0)
    p = roles.add_parser("pub")
    p.add_argument("topic")
    p.add_argument("count", type=int)
    p.add_argument("--wait", action="store_true")
    r = roles.add_parser("register")
    r.add_argument("name")
    r.add_argument("--ttl", type=float, default=None)
    args = parser.parse_args()
    asyncio.run({"sub": sub, "pub": pub, "register": register}[args.role](args))


if __name__ == "__main__":
    main()
