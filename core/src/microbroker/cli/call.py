"""``microbroker call SERVICE ENDPOINT JSON``: a request/response call through the RPC layer."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from .._client import Client
from .._errors import DecodeError, EncodeError, MicrobrokerError, RpcError, RpcTimeout
from ._common import FAILED, OK, TIMEOUT, USAGE, CliError, connected, make_broker, parse_header
from ._common import read_data as _read_data


def add_parser(commands: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = commands.add_parser(
        "call",
        help="call a service endpoint with a JSON request",
        description="Call ENDPOINT (Handler.Method) of SERVICE with the JSON request "
        "and print the JSON reply. An error the service returns is printed on stderr "
        "in go-micro's form (id, code, detail, status) and exits 1; no reply within "
        "--timeout exits 4.",
    )
    parser.add_argument("service", metavar="SERVICE")
    parser.add_argument("endpoint", metavar="ENDPOINT", help="e.g. Greeter.Hello")
    parser.add_argument("request", metavar="JSON", help="the request: JSON text, @PATH or -")
    parser.add_argument(
        "--metadata",
        "-m",
        metavar="NAME=VALUE",
        action="append",
        default=[],
        help="call metadata (the handler's ctx.metadata), repeatable",
    )
    parser.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=_seconds,
        default=5.0,
        help="wait this long for the reply (default 5, as go-micro)",
    )
    parser.add_argument(
        "--retries",
        metavar="N",
        type=int,
        default=0,
        help="retry N more times after a timeout or when no instance serves (default 0)",
    )
    parser.add_argument("--compact", action="store_true", help="print the reply on one line")
    return parser


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def parse_request(spec: str) -> Any:
    """The request as a JSON value; invalid JSON is a usage error (exit 2)."""
    data = _read_data(spec)
    try:
        return json.loads(data)
    except ValueError as exc:
        raise CliError(f"JSON is not valid JSON ({exc})", USAGE) from exc


def run(args: argparse.Namespace) -> int:
    if args.retries < 0:
        raise CliError("--retries cannot be negative", USAGE)
    if "." not in args.endpoint:
        raise CliError(f"ENDPOINT is 'Handler.Method', not {args.endpoint!r}", USAGE)
    request = parse_request(args.request)
    metadata = dict(parse_header(item) for item in args.metadata)
    broker = make_broker(args)
    reply = asyncio.run(_call(broker, args, request, metadata))
    if args.compact:
        text = json.dumps(reply, ensure_ascii=False, separators=(",", ":"))
    else:
        text = json.dumps(reply, ensure_ascii=False, indent=2)
    sys.stdout.write(text + "\n")
    return OK


async def _call(
    broker: Any, args: argparse.Namespace, request: Any, metadata: dict[str, str]
) -> Any:
    async with connected(broker):
        client = Client(broker, content_type="application/json")
        try:
            return await client.call(
                args.service,
                args.endpoint,
                request,
                object,
                timeout=args.timeout,
                retries=args.retries,
                metadata=metadata,
            )
        except RpcTimeout as exc:
            raise CliError(exc.detail, TIMEOUT) from exc
        except RpcError as exc:
            raise CliError(f"{args.service} {args.endpoint} returned an error: {exc}") from exc
        except DecodeError as exc:
            raise CliError(
                f"the reply is not JSON: {exc}; call an endpoint that answers in JSON", FAILED
            ) from exc
        except EncodeError as exc:
            raise CliError(f"cannot encode the request: {exc}", USAGE) from exc
        except (MicrobrokerError, OSError) as exc:
            raise CliError(f"call to {args.service} {args.endpoint} failed: {exc}") from exc
