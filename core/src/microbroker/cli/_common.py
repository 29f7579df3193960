"""What the commands share: exit codes, broker selection, data input, body display, tables."""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import os
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, NoReturn, TextIO

from .._broker import Broker
from .._errors import PluginError, PluginNotFound
from .._selection import DEFAULT_BROKER, get_broker

# Exit codes, documented in ``microbroker --help`` and docs/cli.md.
OK = 0
FAILED = 1
"""The broker or service refused the operation (an RPC error, a refused publish)."""
USAGE = 2
"""Bad arguments or data: unknown broker, bad option, invalid JSON, unreadable file."""
UNREACHABLE = 3
"""The broker could not connect (server down, address refused, port taken)."""
TIMEOUT = 4
"""``--timeout`` ran out before the command finished."""
INTERRUPTED = 130
"""Stopped by Ctrl-C (``subscribe`` without ``--count`` ends this way with 0)."""

EXIT_CODES_HELP = f"""\
exit codes:
  0    success
  1    the broker or service refused the operation (RPC error, publish error);
       run: the service did not start or keep running
  2    usage: bad arguments, unknown broker or plugin, bad option, invalid data or JSON;
       run: the app cannot be loaded
  3    cannot connect to the broker
  4    timed out (--timeout)
  130  interrupted (Ctrl-C), except for subscribe without --count and run, which
       exit 0 (run: 130 when a second Ctrl-C cuts the drain short)

environment:
  MICRO_BROKER          broker name (default: {DEFAULT_BROKER}); --broker overrides it
  MICRO_BROKER_ADDRESS  broker address; --address overrides it
  MICRO_REGISTRY        service registry of the http broker (default: local)
"""


class CliError(Exception):
    """An error the command line reports as one line on stderr and an exit code."""

    def __init__(self, message: str, code: int = FAILED) -> None:
        super().__init__(message)
        self.code = code


def usage_error(message: str) -> NoReturn:
    raise CliError(message, USAGE)


# Broker selection ------------------------------------------------------------------


def add_broker_arguments(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """Add --broker, --address and --option to ``parser``.

    They are accepted before and after the command name; the sub-command's
    copies default to SUPPRESS so that they do not hide the top-level ones.
    """
    default: Any = None if top else argparse.SUPPRESS
    group = parser.add_argument_group("broker selection")
    group.add_argument(
        "--broker",
        "-b",
        metavar="NAME",
        default=default,
        help=f"broker name (default: $MICRO_BROKER, else {DEFAULT_BROKER})",
    )
    group.add_argument(
        "--address",
        "-a",
        metavar="ADDR",
        default=default,
        help="broker address (default: $MICRO_BROKER_ADDRESS, else the broker's own)",
    )
    group.add_argument(
        "--option",
        "-o",
        metavar="KEY=VALUE",
        action="append",
        default=default,
        help="a broker option, repeatable; VALUE is read as JSON when it parses "
        "(1, 2.5, true, null, [..]) and as text otherwise",
    )


def parse_options(items: Sequence[str] | None, *, flag: str = "--option") -> dict[str, Any]:
    """``["max_batch=64", "secret=s3"]`` -> ``{"max_batch": 64, "secret": "s3"}``."""
    options: dict[str, Any] = {}
    for item in items or ():
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key.isidentifier():
            usage_error(f"{flag} takes KEY=VALUE with KEY an option name, not {item!r}")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        options[key] = value
    return options


def broker_name(args: argparse.Namespace) -> str:
    name: str | None = getattr(args, "broker", None)
    return name or os.environ.get("MICRO_BROKER") or DEFAULT_BROKER


def make_broker(args: argparse.Namespace) -> Broker:
    """The broker the arguments and the environment select, not yet connected."""
    options = parse_options(getattr(args, "option", None))
    address: str | None = getattr(args, "address", None)
    if address:
        options["address"] = address
    name = broker_name(args)
    try:
        return get_broker(name, **options)
    except PluginNotFound as exc:
        raise CliError(str(exc), USAGE) from exc
    except PluginError as exc:
        raise CliError(str(exc), USAGE) from exc
    except (TypeError, ValueError) as exc:
        raise CliError(f"cannot create the {name} broker: {exc}", USAGE) from exc


_FAILED_DISCONNECT = 2.0
"""Seconds a failed command gives the broker to disconnect before it exits anyway."""


@contextlib.asynccontextmanager
async def connected(broker: Broker) -> AsyncIterator[Broker]:
    """Connect ``broker`` (a failure is exit code 3) and always disconnect it."""
    try:
        await broker.connect()
    except Exception as exc:
        where = f" at {broker.address}" if broker.address else ""
        raise CliError(
            f"cannot connect to the {broker.name} broker{where}: {exc}", UNREACHABLE
        ) from exc
    try:
        yield broker
    except BaseException:
        # The command failed already: do not wait the broker's whole drain time for
        # deliveries it could not make, and let the first error be the one reported.
        try:
            await asyncio.wait_for(broker.disconnect(), _FAILED_DISCONNECT)
        except (Exception, TimeoutError):
            # A disconnect cut short leaves sessions open; asyncio's complaints about
            # them would bury the one line that says what went wrong.
            logging.getLogger("asyncio").setLevel(logging.CRITICAL)
        raise
    await broker.disconnect()


def describe(broker: Broker) -> str:
    """``http at 127.0.0.1:40123``: the bound address when the broker serves on a free port."""
    address = getattr(broker, "bound_address", None) or broker.address
    return f"{broker.name} at {address}" if address else broker.name


# Data input ------------------------------------------------------------------------


def read_data(spec: str, *, stdin: Any = None) -> bytes:
    """DATA as given on the command line: text, ``@path`` for a file, ``-`` for stdin."""
    if spec == "-":
        stream = stdin if stdin is not None else sys.stdin.buffer
        data: bytes = stream.read()
        return data
    if spec.startswith("@") and len(spec) > 1:
        path = Path(spec[1:])
        try:
            return path.read_bytes()
        except OSError as exc:
            usage_error(f"cannot read {path}: {exc.strerror or exc}")
    return spec.encode("utf-8", "surrogateescape")


def parse_header(item: str) -> tuple[str, str]:
    name, sep, value = item.partition("=")
    if not sep:
        name, sep, value = item.partition(":")
    name = name.strip()
    if not sep or not name:
        usage_error(f"--header takes NAME=VALUE, not {item!r}")
    return name, value.strip()


# Body display ------------------------------------------------------------------------


def decode_body(
    body: bytes, content_type: str | None, *, binary: str = "base64"
) -> tuple[str, Any]:
    """How to show ``body``: ``("json", value)``, ``("text", str)`` or ``(binary, encoded)``.

    JSON when it parses as JSON (whatever the content type claims, unless it is
    protobuf), UTF-8 text when it decodes as printable text, else hex or base64.
    """
    kind = (content_type or "").partition(";")[0].strip().lower()
    if "protobuf" not in kind and kind.rpartition("/")[2] != "proto":
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        if text is not None:
            stripped = text.strip()
            if stripped[:1] in ("{", "[") or kind.endswith("json"):
                try:
                    return "json", json.loads(text)
                except ValueError:
                    pass
            if all(ch.isprintable() or ch in "\n\r\t" for ch in text):
                return "text", text
    if binary == "hex":
        return "hex", body.hex()
    return "base64", base64.b64encode(body).decode("ascii")


def guess_content_type(body: bytes) -> str:
    """The content type ``publish`` writes when none is given."""
    kind, _ = decode_body(body, None)
    if kind == "json":
        return "application/json"
    if kind == "text":
        return "text/plain; charset=utf-8"
    return "application/octet-stream"


# Tables ------------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], out: TextIO) -> None:
    """Write rows under a header, columns padded to their widest cell."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        return "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(cells)).rstrip()

    out.write(line(headers) + "\n")
    out.write(line(["-" * w for w in widths]) + "\n")
    for row in rows:
        out.write(line(row) + "\n")
