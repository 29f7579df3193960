"""The ``microbroker`` command line: plugins, publish, subscribe, call, run services, bench.

Every command selects its broker like an application does (``MICRO_BROKER``,
``MICRO_BROKER_ADDRESS``), or with ``--broker`` / ``--address`` /
``--option KEY=VALUE``. Errors are one line on stderr and a documented exit
code (see ``microbroker --help``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from . import bench, call, docs, plugins, publish, run, subscribe
from ._common import EXIT_CODES_HELP, INTERRUPTED, USAGE, CliError, add_broker_arguments

__all__ = ["main"]

_COMMANDS = (plugins, publish, subscribe, call, run, bench, docs)


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors on our exit code and in our one-line format."""

    def error(self, message: str) -> argparse.NoReturn:  # type: ignore[name-defined]
        self.print_usage(sys.stderr)
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(USAGE)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``microbroker`` and its commands."""
    parser = _Parser(
        prog="microbroker",
        description="Publish, subscribe, call and run services, and benchmark, through "
        "any installed microbroker broker.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_broker_arguments(parser, top=True)
    parser.add_argument(
        "--verbose", "-v", action="count", default=0, help="log more (-v info, -vv debug)"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True
    for module in _COMMANDS:
        sub = module.add_parser(commands)
        add_broker_arguments(sub, top=False)
        sub.set_defaults(run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (the console script exits with it)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="microbroker: %(levelname)s: %(message)s")
    try:
        code: int = args.run(args)
    except CliError as exc:
        sys.stderr.write(f"microbroker {args.command}: error: {exc}\n")
        return exc.code
    except KeyboardInterrupt:
        sys.stderr.write("\ninterrupted\n")
        return INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`microbroker subscribe ... | head`): not an error of ours.
        # Point stdout at devnull so that the interpreter's final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return code
