"""``python -m microbroker.conformance --broker NAME``: exit 0 only when the broker conforms."""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m microbroker.conformance",
        description="Run the microbroker conformance suite against an installed broker.",
    )
    parser.add_argument("--broker", required=True, help="the broker's registered name")
    parser.add_argument("--address", help="the broker's address")
    parser.add_argument(
        "--restart-command",
        help="a shell command that restarts the server on the same address (restart cases)",
    )
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a broker option, repeatable; VALUE is parsed as JSON when it can be",
    )
    parser.add_argument("-k", dest="keyword", help="only the cases matching this expression")
    parser.add_argument("-v", "--verbose", action="store_true", help="list every case")
    args = parser.parse_args(argv)

    try:
        import pytest
    except ImportError:
        from . import INSTALL_HINT

        print(f"error: {INSTALL_HINT}", file=sys.stderr)
        return 2

    from .._errors import BrokerNotFound, PluginError
    from .._selection import get_broker

    try:  # fail fast, and clearly, on a name that is not installed
        get_broker(args.broker, **({"address": args.address} if args.address else {}))
    except (BrokerNotFound, PluginError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    from . import run

    # The suite runs on its own: not under the configuration or conftest files of
    # the directory it is started from, and without async plugins (it runs its
    # own event loops).
    pytest_args = [
        run.__file__,
        "-c",
        os.devnull,
        "--rootdir",
        os.path.dirname(run.__file__),
        "-p",
        "no:cacheprovider",
        "-p",
        "no:asyncio",
        "-W",
        "ignore::pytest.PytestAssertRewriteWarning",
        "-o",
        "python_classes=Test*",
        "-o",
        "python_functions=test_*",
        f"--microbroker-broker={args.broker}",
        "-rs" if args.verbose else "-q",
    ]
    if os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD"):
        # Without autoload the pytest11 entry point is not read: load the plugin by name.
        pytest_args += ["-p", "microbroker.conformance.plugin"]
    if args.address:
        pytest_args.append(f"--microbroker-address={args.address}")
    if args.restart_command:
        pytest_args.append(f"--microbroker-restart-command={args.restart_command}")
    for option in args.option:
        pytest_args.append(f"--microbroker-option={option}")
    if args.keyword:
        pytest_args += ["-k", args.keyword]
    if args.verbose:
        pytest_args.append("-v")
    code = int(pytest.main(pytest_args))
    print(
        f"\nbroker {args.broker!r}: "
        + ("conforms" if code == 0 else f"does NOT conform (pytest exit {code})")
    )
    return code


if __name__ == "__main__":
    sys.exit(main())
