"""``microbroker run MODULE:SERVICE``: serve a Service, in this process or in supervised workers.

Without ``--workers`` or ``--reload`` the service runs in this process. With
them, this process becomes a supervisor (see ``_supervisor.py``) and each
worker is this same command, started afresh with ``--worker-channel``: it
imports the app itself and tells the supervisor when it serves.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import inspect
import logging
import os
import signal
import socket
import sys
import traceback
from pathlib import Path
from typing import Any

from .._service import Service
from ._common import FAILED, INTERRUPTED, OK, CliError, broker_name, connected, usage_error
from ._supervisor import READY, Supervisor

logger = logging.getLogger("microbroker.run")

LOG_FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"
_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def add_parser(commands: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = commands.add_parser(
        "run",
        help="serve a microbroker.Service: in this process, or in supervised workers",
        description="Import MODULE (from the current directory, or --app-dir) and run "
        "the microbroker.Service at ATTRIBUTE (MODULE:ATTRIBUTE, or MODULE:FACTORY() for a "
        "function that returns one): start it, serve until SIGTERM or Ctrl-C, let running "
        "handlers finish, stop. --broker and --address select the broker as MICRO_BROKER "
        "and MICRO_BROKER_ADDRESS do, for a service that leaves the choice to the "
        "environment. A second SIGTERM or Ctrl-C cuts the drain short (exit 130).",
    )
    parser.add_argument(
        "app", metavar="MODULE:ATTRIBUTE", help="e.g. app:service, or app:make_service()"
    )
    parser.add_argument(
        "--workers",
        "-w",
        metavar="N",
        type=_positive,
        help="run N worker processes under a supervisor that restarts those that die; "
        "they share the work through the service's queue groups (default: serve in "
        "this process, unsupervised)",
    )
    parser.add_argument(
        "--reload",
        action="store_true",
        help="restart the worker(s) when a .py file changes under the app's directory "
        "(needs the reload extra: pip install 'microbroker[reload]')",
    )
    parser.add_argument(
        "--reload-dir",
        metavar="DIR",
        action="append",
        default=[],
        help="watch DIR instead of the app's directory, repeatable (with --reload)",
    )
    parser.add_argument(
        "--log-level",
        "-l",
        metavar="LEVEL",
        type=str.upper,
        choices=_LEVELS,
        help="log level of the microbroker loggers and the app's package: DEBUG, INFO, "
        "WARNING, ERROR (default: INFO, DEBUG with -vv)",
    )
    parser.add_argument(
        "--app-dir",
        metavar="DIR",
        default=".",
        help="import the app from DIR (default: the current directory)",
    )
    parser.add_argument(
        "--graceful-timeout",
        metavar="SECONDS",
        type=_seconds,
        default=30.0,
        help="with --workers or --reload: how long a worker may drain after SIGTERM "
        "before it is killed (default 30)",
    )
    parser.add_argument(
        "--max-restarts",
        metavar="N",
        type=_positive,
        default=5,
        help="with --workers or --reload: restarts of one worker within a minute before "
        "the supervisor gives up and exits 1 (default 5)",
    )
    # How the supervisor starts a worker: the file descriptor of its end of a socket pair.
    parser.add_argument("--worker-channel", metavar="FD", type=int, help=argparse.SUPPRESS)
    return parser


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def run(args: argparse.Namespace) -> int:
    if getattr(args, "option", None):
        usage_error(
            "--option cannot reach the broker of `run`: the app creates its service's "
            "broker itself; give options in the app (Service(name, broker=get_broker(NAME, "
            "KEY=VALUE)))"
        )
    if args.reload_dir and not args.reload:
        usage_error("--reload-dir only has a use with --reload")
    module_name, _ = split_app(args.app)
    # The service reads its broker from the environment when it is created: at import.
    if getattr(args, "broker", None):
        os.environ["MICRO_BROKER"] = args.broker
    if getattr(args, "address", None):
        os.environ["MICRO_BROKER_ADDRESS"] = args.address
    level = args.log_level or ("DEBUG" if args.verbose >= 2 else "INFO")
    configure_logging(level, module_name)
    app_dir = Path(args.app_dir).resolve()
    if not app_dir.is_dir():
        usage_error(f"--app-dir {args.app_dir}: not a directory")
    if args.worker_channel is None and (args.workers is not None or args.reload):
        workers = args.workers or 1
        if workers > 1 and broker_name(args) == "memory":
            usage_error(_MEMORY_WORKERS.format(workers=workers))
        return Supervisor(args, app_dir=app_dir, level=level, workers=workers).run()
    channel = None
    if args.worker_channel is not None:
        channel = socket.socket(fileno=args.worker_channel)
    try:
        return asyncio.run(_serve(args, app_dir, channel))
    finally:
        if channel is not None:
            channel.close()


_MEMORY_WORKERS = (
    "--workers {workers}: the memory broker cannot span processes (each worker would "
    "have a broker of its own, out of reach of every other process); run one worker, "
    "or choose a broker that crosses processes (http, the default; nats, mqtt, kafka...)"
)


def configure_logging(level: str, module_name: str) -> None:
    """Log the ``microbroker`` loggers and the app's package at ``level``, the rest at WARNING.

    Other libraries (asyncio, aiohttp...) stay at WARNING so that DEBUG is about
    microbroker and the app, not about every dependency.
    """
    logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT, force=True)
    numeric = logging.getLevelName(level)
    logging.getLogger("microbroker").setLevel(numeric)
    top = module_name.partition(".")[0]
    if top and top != "microbroker":
        logging.getLogger(top).setLevel(numeric)


# Loading the app --------------------------------------------------------------------


def split_app(spec: str) -> tuple[str, str]:
    """``"pkg.app:service"`` -> ``("pkg.app", "service")``; anything else is a usage error."""
    module_name, sep, attribute = spec.partition(":")
    module_name, attribute = module_name.strip(), attribute.strip()
    parts = module_name.split(".")
    if not sep or not all(part.isidentifier() for part in parts) or not attribute:
        usage_error(
            f"{spec!r} is not MODULE:ATTRIBUTE (e.g. app:service, pkg.app:service, "
            "app:make_service())"
        )
    target = attribute.removesuffix("()")
    if not all(part.isidentifier() for part in target.split(".")):
        usage_error(f"{spec!r}: {attribute!r} is not an attribute name (or a call: name())")
    return module_name, attribute


async def load_app(spec: str, app_dir: Path) -> Service:
    """Import the module of ``spec`` from ``app_dir`` and return the Service it names.

    Every failure is a usage error (exit 2) that says what was found instead;
    an exception raised by the app's own code is printed with its traceback first.
    """
    module_name, attribute = split_app(spec)
    path = str(app_dir)
    if path not in sys.path:
        # As uvicorn does: the app's directory first, so that its modules win.
        sys.path.insert(0, path)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing == module_name or module_name.startswith(missing + "."):
            usage_error(
                f"cannot import {module_name!r}: no module named {missing!r} in {path} "
                "(give the app's directory with --app-dir) nor on the Python path"
            )
        _print_app_traceback()
        usage_error(f"importing {module_name!r} failed: {type(exc).__name__}: {exc}")
    except Exception as exc:
        _print_app_traceback()
        usage_error(f"importing {module_name!r} failed: {type(exc).__name__}: {exc}")
    call = attribute.endswith("()")
    target = attribute.removesuffix("()")
    value: Any = module
    for part in target.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            usage_error(f"{module_name!r} has no attribute {target!r}{_candidates(module)}")
    where = f"{module_name}:{target}"
    if call:
        if not callable(value):
            usage_error(f"{where} is {_kind(value)}, which cannot be called")
        try:
            value = value()
            if inspect.isawaitable(value):
                value = await value
        except Exception as exc:
            _print_app_traceback()
            usage_error(f"{where}() failed: {type(exc).__name__}: {exc}")
        where += "()"
        if not isinstance(value, Service):
            usage_error(f"{where} returned {_kind(value)}, not a microbroker.Service")
        return value
    if not isinstance(value, Service):
        hint = ""
        if callable(value) and not isinstance(value, type):
            hint = f"; if it returns one, call it: {where}()"
        usage_error(f"{where} is {_kind(value)}, not a microbroker.Service{hint}")
    return value


def _kind(value: object) -> str:
    if inspect.isclass(value):
        return f"the class {value.__qualname__}"
    if inspect.isfunction(value) or inspect.ismethod(value):
        return f"the function {value.__qualname__}"
    if inspect.ismodule(value):
        return f"the module {value.__name__}"
    return f"a value of type {type(value).__qualname__} ({value!r:.60})"


def _candidates(module: object) -> str:
    services = sorted(name for name, value in vars(module).items() if isinstance(value, Service))
    if services:
        return f"; its microbroker.Service attributes: {', '.join(services)}"
    return "; it has no microbroker.Service attribute"


def _print_app_traceback() -> None:
    """Print the traceback of the exception being handled, from the app's first frame on.

    The app's own error: the user needs its traceback, not only our one line,
    and not the frames of this module and of importlib that lead to it.
    """
    exc = sys.exc_info()[1]
    if exc is None:
        return
    tb = exc.__traceback__
    while tb is not None and _ours(tb.tb_frame.f_code.co_filename):
        tb = tb.tb_next
    traceback.print_exception(type(exc), exc, tb)
    sys.stderr.flush()


def _ours(filename: str) -> bool:
    return (
        filename == __file__
        or filename.startswith("<frozen importlib")
        or (os.path.basename(os.path.dirname(filename)) == "importlib")
    )


# Serving --------------------------------------------------------------------------


async def _serve(args: argparse.Namespace, app_dir: Path, channel: socket.socket | None) -> int:
    """Load the app, start it, serve until signalled (or the supervisor goes away), stop."""
    loop = asyncio.get_running_loop()
    body = asyncio.current_task()
    stopping = asyncio.Event()
    forced = False

    def on_signal(sig: signal.Signals) -> None:
        nonlocal forced
        if not stopping.is_set():
            logger.info("%s received: stopping gracefully (again to stop at once)", sig.name)
            stopping.set()
        elif not forced and body is not None:
            logger.warning("%s received again: stopping at once", sig.name)
            forced = True
            body.cancel()

    # From the start: a SIGTERM while the app loads or connects stops it cleanly, and
    # one during the drain does not kill the process (the handlers stay until the end).
    handled: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal, sig)
            handled.append(sig)
    if channel is not None:
        # The supervisor holds the other end: end of file means it died (kill -9, say).
        channel.setblocking(False)
        loop.add_reader(channel.fileno(), _on_channel, channel, stopping, loop)
    try:
        service = await load_app(args.app, app_dir)
        _check_broker(args, service)
        if stopping.is_set():
            return OK
        async with connected(service.broker):
            await _start(service)
            if stopping.is_set():
                await service.stop()
                return OK
            runner = loop.create_task(service.run(signals=()))
            # Let run() enter its try block: a task cancelled before it first runs would
            # never reach the stop() in its finally.
            await asyncio.sleep(0)
            if channel is not None:
                channel.send(READY)
            waiter = loop.create_task(stopping.wait())
            try:
                await asyncio.wait({runner, waiter}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
            # run() stops the service when cancelled: handlers finish, then it unsubscribes.
            runner.cancel()
            try:
                await runner
            except asyncio.CancelledError:
                if forced:  # this task was cancelled too: a second signal
                    raise
            except Exception as exc:
                raise CliError(f"service {service.name!r} failed: {exc}", FAILED) from exc
            if not stopping.is_set():
                raise CliError(f"service {service.name!r} stopped by itself", FAILED)
    except asyncio.CancelledError:
        if forced:
            raise CliError("interrupted: stopped before the drain was over", INTERRUPTED) from None
        raise
    finally:
        if channel is not None:
            loop.remove_reader(channel.fileno())
        for sig in handled:
            loop.remove_signal_handler(sig)
    return OK


def _on_channel(
    channel: socket.socket, stopping: asyncio.Event, loop: asyncio.AbstractEventLoop
) -> None:
    try:
        data = channel.recv(64)
    except BlockingIOError:
        return
    except OSError:
        data = b""
    if not data:
        loop.remove_reader(channel.fileno())
        if not stopping.is_set():
            logger.warning("the supervisor went away: stopping gracefully")
            stopping.set()


def _check_broker(args: argparse.Namespace, service: Service) -> None:
    asked = getattr(args, "broker", None)
    if asked and service.broker.name != asked:
        usage_error(
            f"--broker {asked}: service {service.name!r} uses the {service.broker.name} broker "
            "it was given in the app; --broker only selects the broker of a service created "
            "without one"
        )
    if (args.workers or 1) > 1 and service.broker.name == "memory":
        usage_error(_MEMORY_WORKERS.format(workers=args.workers))


async def _start(service: Service) -> None:
    try:
        await service.start()
    except Exception as exc:
        logger.debug("start of service %r failed", service.name, exc_info=True)
        raise CliError(f"service {service.name!r} did not start: {exc}", FAILED) from exc
