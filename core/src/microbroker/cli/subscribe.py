"""``microbroker subscribe TOPIC``: print every delivery until ``--count`` or Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from typing import Any, TextIO

from .._delivery import Delivery
from .._errors import InvalidTopic, MicrobrokerError
from ._common import (
    FAILED,
    OK,
    TIMEOUT,
    USAGE,
    CliError,
    connected,
    decode_body,
    describe,
    make_broker,
)


def add_parser(commands: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = commands.add_parser(
        "subscribe",
        help="print the messages published on a topic",
        description="Subscribe to TOPIC and print each delivery: topic, headers and "
        "body (JSON pretty-printed, UTF-8 text as is, anything else as base64 or hex). "
        "A line on stderr says when the subscription is live. Ctrl-C ends it (exit 0).",
    )
    parser.add_argument("topic", metavar="TOPIC")
    parser.add_argument("--queue", "-q", metavar="QUEUE", help="join queue group QUEUE")
    parser.add_argument("--count", "-n", metavar="N", type=_positive, help="exit after N messages")
    parser.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=float,
        help="stop after SECONDS; with --count, exit 4 when fewer messages arrived",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object per delivery (topic, queue, attempt, headers, body)",
    )
    parser.add_argument(
        "--binary",
        choices=("base64", "hex"),
        default="base64",
        help="how to print a body that is neither JSON nor text (default: base64)",
    )
    return parser


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def run(args: argparse.Namespace) -> int:
    broker = make_broker(args)
    return asyncio.run(_subscribe(broker, args))


class _Printer:
    """The subscription's handler: prints deliveries and counts them."""

    def __init__(self, args: argparse.Namespace, out: TextIO) -> None:
        self.args = args
        self.out = out
        self.seen = 0
        self.done = asyncio.Event()

    async def __call__(self, delivery: Delivery) -> None:
        count = self.args.count
        if count is not None and self.seen >= count:
            # Arrived after the last one we wanted: leave it to the broker to deliver again.
            await delivery.nack()
            return
        self.seen += 1
        self.show(delivery)
        if count is not None and self.seen >= count:
            self.done.set()

    def show(self, delivery: Delivery) -> None:
        message = delivery.message
        kind, body = decode_body(
            bytes(message.body), message.header("Content-Type"), binary=self.args.binary
        )
        out = self.out
        if self.args.json:
            record = {
                "topic": delivery.topic,
                "queue": delivery.queue,
                "attempt": delivery.attempt,
                "headers": dict(message.headers),
                "encoding": kind,
                "body": body,
            }
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
        else:
            title = f"#{self.seen} {delivery.topic}"
            if delivery.queue:
                title += f" (queue {delivery.queue})"
            if delivery.attempt > 1:
                title += f" (attempt {delivery.attempt})"
            out.write(f"{title}\n")
            for name, value in sorted(message.headers.items(), key=lambda kv: kv[0].lower()):
                out.write(f"  {name}: {value}\n")
            if kind == "json":
                text = json.dumps(body, indent=2, ensure_ascii=False)
            elif kind == "text":
                text = body
            else:
                text = f"({len(message.body)} bytes, {kind}) {body}"
            out.write(text + ("\n" if not text.endswith("\n") else "") + "\n")
        out.flush()


async def _subscribe(broker: Any, args: argparse.Namespace) -> int:
    printer = _Printer(args, sys.stdout)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        # Ctrl-C is how an open-ended subscription ends: disconnect cleanly, exit 0.
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
    try:
        async with connected(broker):
            try:
                subscription = await broker.subscribe(args.topic, printer, queue=args.queue)
            except InvalidTopic as exc:
                raise CliError(str(exc), USAGE) from exc
            except (MicrobrokerError, OSError) as exc:
                raise CliError(f"cannot subscribe to {args.topic!r}: {exc}", FAILED) from exc
            group = f" in queue group {args.queue!r}" if args.queue else ""
            until = f"{args.count} message(s)" if args.count else "Ctrl-C"
            sys.stderr.write(
                f"subscribed to {args.topic!r}{group} on {describe(broker)}; waiting for {until}\n"
            )
            sys.stderr.flush()
            waiters = {
                asyncio.ensure_future(stop.wait()),
                asyncio.ensure_future(printer.done.wait()),
            }
            try:
                finished, _ = await asyncio.wait(
                    waiters, timeout=args.timeout, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                for waiter in waiters:
                    waiter.cancel()
            await subscription.unsubscribe()
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
    if not finished and args.count is not None:
        wanted = f" of {args.count}" if args.count else ""
        raise CliError(
            f"timed out after {args.timeout:g}s with {printer.seen}{wanted} message(s)", TIMEOUT
        )
    return OK
