"""``microbroker publish TOPIC DATA``: publish one message, as go-micro's Client would."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from .._errors import InvalidHeader, InvalidTopic, MicrobrokerError
from .._headers import CONTENT_TYPE, ID, TOPIC, new_message_id
from .._message import Message
from ._common import (
    FAILED,
    OK,
    TIMEOUT,
    USAGE,
    CliError,
    connected,
    guess_content_type,
    make_broker,
    parse_header,
    parse_options,
    read_data,
)


def add_parser(commands: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = commands.add_parser(
        "publish",
        help="publish one message on a topic",
        description="Publish DATA on TOPIC with go-micro's headers (Content-Type, "
        "Micro-Topic, Micro-Id). DATA is the text itself, @PATH for a file's bytes, "
        "or - for standard input. Without --content-type, JSON data is sent as "
        "application/json, other UTF-8 as text/plain, the rest as application/octet-stream.",
    )
    parser.add_argument("topic", metavar="TOPIC")
    parser.add_argument("data", metavar="DATA", help="the body: text, @PATH or - (stdin)")
    parser.add_argument(
        "--header",
        "-H",
        metavar="NAME=VALUE",
        action="append",
        default=[],
        help="a message header, repeatable",
    )
    parser.add_argument(
        "--content-type",
        "-t",
        metavar="TYPE",
        help="the Content-Type header; application/json data is checked to be valid JSON",
    )
    parser.add_argument(
        "--publish-option",
        "-P",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="an option of the broker's publish (a Kafka key, an MQTT qos...), repeatable; "
        "VALUE is read as JSON when it parses. The http broker gets confirm=true unless "
        "told otherwise, so that the command fails when no subscriber acks",
    )
    parser.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=float,
        default=30.0,
        help="give up (exit 4) when the publish takes longer; default 30",
    )
    parser.add_argument(
        "--quiet", "-q", action="store_true", help="print nothing when the publish succeeds"
    )
    return parser


def build_message(args: argparse.Namespace) -> Message:
    """The message the arguments describe; invalid data is a usage error (exit 2)."""
    body = read_data(args.data)
    content_type: str = args.content_type or guess_content_type(body)
    if "json" in content_type.partition(";")[0].lower():
        try:
            json.loads(body)
        except ValueError as exc:
            raise CliError(
                f"DATA is not valid JSON ({exc}); fix it or choose another --content-type",
                USAGE,
            ) from exc
    headers: dict[str, str] = {}
    for item in args.header:
        name, value = parse_header(item)
        headers[name] = value
    headers[CONTENT_TYPE] = content_type
    headers[TOPIC] = args.topic
    headers[ID] = new_message_id()
    return Message(body, headers)


def run(args: argparse.Namespace) -> int:
    message = build_message(args)
    options = parse_options(args.publish_option, flag="--publish-option")
    broker = make_broker(args)
    if broker.name == "http":
        # This process exits right after: wait for the subscribers' acks, so that a
        # delivery that fails is this command's error and not a warning at exit.
        options.setdefault("confirm", True)
    return asyncio.run(_publish(broker, args, message, options))


async def _publish(
    broker: Any, args: argparse.Namespace, message: Message, options: dict[str, Any]
) -> int:
    async with connected(broker):
        try:
            async with asyncio.timeout(args.timeout):
                await broker.publish(args.topic, message, **options)
        except TimeoutError as exc:
            raise CliError(
                f"publish on {args.topic!r} did not complete within {args.timeout:g}s", TIMEOUT
            ) from exc
        except (InvalidTopic, InvalidHeader) as exc:
            raise CliError(str(exc), USAGE) from exc
        except TypeError as exc:
            raise CliError(f"bad --publish-option: {exc}", USAGE) from exc
        except (MicrobrokerError, OSError) as exc:
            raise CliError(f"publish on {args.topic!r} failed: {exc}", FAILED) from exc
    if not args.quiet:
        print(
            f"published {len(message.body)} bytes on {args.topic!r} via {broker.name} "
            f"(Micro-Id {message.headers[ID]})"
        )
    if broker.name == "memory":
        sys.stderr.write(
            "note: the memory broker is in-process: no other process receives this message; "
            "use a broker that crosses processes (--broker http, nats...)\n"
        )
    return OK
