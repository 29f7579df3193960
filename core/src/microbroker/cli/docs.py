"""``microbroker docs [serve] MODULE:SERVICE``: a service's AsyncAPI 3.0 document, or its page.

The service is found as ``microbroker run`` finds it: MODULE is imported with
the current directory on ``sys.path``, and SERVICE names a
:class:`microbroker.Service` in it (``app.service`` for an attribute of an
attribute; ``make_service()`` to call a factory, which may be async).
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
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .._service import Service
from ._common import OK, UNREACHABLE, USAGE, CliError, usage_error

_SERVE = "serve"


def add_parser(commands: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = commands.add_parser(
        "docs",
        help="write a service's AsyncAPI 3.0 document, or serve it as a page",
        usage="microbroker docs [serve] MODULE:SERVICE [options]",
        description="Write the AsyncAPI 3.0 document of the microbroker.Service named "
        "MODULE:SERVICE (JSON, or YAML with --yaml): its broker as the server, a channel per "
        "topic it subscribes to or publishes on, the operations, and the payload schemas. "
        "`docs serve MODULE:SERVICE` serves it as an HTML page that works offline and prints "
        "its URL. MODULE is imported with the current directory on sys.path; SERVICE is an "
        "attribute (app.service), or a factory to call (make_service()). --broker and "
        "--address set MICRO_BROKER and MICRO_BROKER_ADDRESS for the import.",
    )
    parser.add_argument(
        "words",
        metavar="[serve] MODULE:SERVICE",
        nargs="+",
        help="the service, as module:attribute; prefixed by `serve` to serve the page",
    )
    parser.add_argument(
        "--yaml", action="store_true", help="write YAML instead of JSON (needs PyYAML)"
    )
    parser.add_argument(
        "--output", metavar="PATH", help="write the document to PATH instead of standard output"
    )
    parser.add_argument(
        "--info-version",
        metavar="VERSION",
        default="0.0.0",
        help="the document's info.version (default 0.0.0)",
    )
    parser.add_argument("--description", metavar="TEXT", help="the document's info.description")
    parser.add_argument(
        "--app-dir",
        metavar="DIR",
        default=".",
        help="the directory MODULE is imported from, first on sys.path (default: the current "
        "directory)",
    )
    parser.add_argument(
        "--host",
        metavar="HOST",
        help="serve: the address to listen on (default 127.0.0.1, loopback only)",
    )
    parser.add_argument(
        "--port",
        metavar="PORT",
        type=int,
        help="serve: the port to listen on (default 0: a free port, printed)",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    serving, target = _parse_words(args.words)
    if getattr(args, "option", None):
        usage_error("docs documents the service's own broker: --option cannot reach it")
    if serving and (args.yaml or args.output):
        usage_error("--yaml and --output are options of `docs`, not of `docs serve`")
    if not serving and (args.host is not None or args.port is not None):
        usage_error("--host and --port are options of `docs serve`")
    # Imported here: the other commands do not pay for what only this one uses.
    from ..asyncapi import document, to_json, to_yaml

    service = load_service(
        target, app_dir=Path(args.app_dir), broker=args.broker, address=args.address
    )
    doc = document(service, version=args.info_version, description=args.description)
    if serving:
        return _serve(service, doc, args.host or "127.0.0.1", args.port or 0)
    try:
        text = to_yaml(doc) if args.yaml else to_json(doc)
    except ModuleNotFoundError as exc:
        raise CliError(str(exc), USAGE) from exc
    if args.output:
        try:
            Path(args.output).write_text(text, encoding="utf-8")
        except OSError as exc:
            usage_error(f"cannot write {args.output}: {exc.strerror or exc}")
    else:
        sys.stdout.write(text)
    return OK


def _parse_words(words: list[str]) -> tuple[bool, str]:
    if len(words) == 2 and words[0] == _SERVE:
        return True, words[1]
    if len(words) == 1 and words[0] != _SERVE:
        return False, words[0]
    if words == [_SERVE]:
        usage_error("docs serve needs the service: microbroker docs serve MODULE:SERVICE")
    usage_error(f"expected MODULE:SERVICE or serve MODULE:SERVICE, not {' '.join(words)!r}")


# Finding the service -----------------------------------------------------------------


def load_service(
    target: str,
    *,
    app_dir: Path | None = None,
    broker: str | None = None,
    address: str | None = None,
) -> Service:
    """Import ``module:attribute`` (or ``module:factory()``) and return the Service it names.

    ``app_dir`` (default: the current directory) goes first on ``sys.path``.
    Every failure is a usage error (exit 2), as for ``microbroker run``: a
    target that is not there, and a module or factory that raises (its error
    in one line).
    """
    module_name, sep, attribute = target.partition(":")
    if not sep or not module_name or not attribute:
        usage_error(f"expected MODULE:SERVICE (as in shop.service:service), not {target!r}")
    if module_name.endswith(".py") or os.sep in module_name:
        usage_error(
            f"{module_name!r} is a path: give the module's name, run from the folder that "
            "holds it (cd examples/shop && microbroker docs service:service)"
        )
    call = attribute.endswith("()")
    path = attribute[:-2] if call else attribute
    if not all(part.isidentifier() for part in path.split(".")):
        usage_error(f"{attribute!r} is not an attribute name (or a call: name())")
    with _broker_environment(broker, address):
        module = _import(module_name, (app_dir or Path()).resolve())
        value: Any = module
        for part in path.split("."):
            try:
                value = getattr(value, part)
            except AttributeError:
                usage_error(f"module {module_name!r} has no attribute {path!r}")
        if call:
            value = _call_factory(value, target)
    if not isinstance(value, Service):
        usage_error(
            f"{target} is {_describe(value)}, not a microbroker.Service"
            + ("" if call or not callable(value) else f" (to call it: {module_name}:{path}())")
        )
    return value


def _import(module_name: str, app_dir: Path) -> Any:
    if not app_dir.is_dir():
        usage_error(f"--app-dir {app_dir} is not a directory")
    # As `python -m` and `microbroker run`: the app's directory first.
    path = str(app_dir)
    if path not in sys.path:
        sys.path.insert(0, path)
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if module_name == missing or module_name.startswith(missing + "."):
            usage_error(f"no module named {missing!r} in {path} or on sys.path")
        usage_error(f"importing {module_name!r} failed: {_one_line(exc)}")
    except SystemExit as exc:
        usage_error(f"importing {module_name!r} exited (code {exc.code})")
    except Exception as exc:
        usage_error(f"importing {module_name!r} failed: {_one_line(exc)}")


def _call_factory(factory: Any, target: str) -> Any:
    if not callable(factory):
        usage_error(f"{target[:-2]} is {_describe(factory)}: it cannot be called")
    try:
        value = factory()
        if inspect.isawaitable(value):
            value = asyncio.run(_awaited(value))
    except CliError:
        raise
    except Exception as exc:
        usage_error(f"{target} failed: {_one_line(exc)}")
    return value


async def _awaited(value: Any) -> Any:
    return await value


@contextmanager
def _broker_environment(broker: str | None, address: str | None) -> Iterator[None]:
    """MICRO_BROKER / MICRO_BROKER_ADDRESS from the command line, while the service is made."""
    changes = {"MICRO_BROKER": broker, "MICRO_BROKER_ADDRESS": address}
    saved = {name: os.environ.get(name) for name in changes}
    for name, value in changes.items():
        if value:
            os.environ[name] = value
    try:
        yield
    finally:
        for name, old in saved.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old


def _describe(value: Any) -> str:
    if inspect.ismodule(value):
        return f"the module {value.__name__!r}"
    return f"a {type(value).__module__}.{type(value).__qualname__}"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# Serving the page --------------------------------------------------------------------


def _serve(service: Service, doc: dict[str, Any], host: str, port: int) -> int:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from ..asyncapi import content_security_policy, page, to_json, to_yaml

    html = page(doc).encode("utf-8")
    body = to_json(doc).encode("utf-8")
    csp = content_security_policy() + "; frame-ancestors 'none'"
    routes = {
        "/": ("text/html; charset=utf-8", html),
        "/index.html": ("text/html; charset=utf-8", html),
        "/asyncapi.json": ("application/json", body),
    }
    # YAML only when PyYAML is there; the JSON is the document all the same.
    with contextlib.suppress(ModuleNotFoundError):
        routes["/asyncapi.yaml"] = ("application/yaml; charset=utf-8", to_yaml(doc).encode())

    class Handler(BaseHTTPRequestHandler):
        server_version = "microbroker-docs"
        sys_version = ""

        def do_GET(self) -> None:
            self._answer(send_body=True)

        def do_HEAD(self) -> None:
            self._answer(send_body=False)

        def _answer(self, *, send_body: bool) -> None:
            route = routes.get(self.path.partition("?")[0])
            if route is None:
                content_type, data, status = "text/plain; charset=utf-8", b"not found\n", 404
            else:
                (content_type, data), status = route, 200
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Content-Security-Policy", csp)
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Referrer-Policy", "no-referrer")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if send_body:
                self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            # One line per request only with -v: the URL line must stay easy to read.
            logging.getLogger("microbroker.docs").info(format, *args)

    class Server(ThreadingHTTPServer):
        # IPv6 when the host is an IPv6 address (--host ::1); http.server is IPv4 only.
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        daemon_threads = True

    try:
        httpd = Server((host, port), Handler)
    except OSError as exc:
        raise CliError(
            f"cannot serve on {host}:{port}: {exc.strerror or exc}", UNREACHABLE
        ) from exc
    bound_host, bound_port = str(httpd.server_address[0]), int(httpd.server_address[1])
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    url = f"http://{shown}:{bound_port}/"
    print(url, flush=True)
    channels = len(doc.get("channels", {}))
    sys.stderr.write(
        f"serving the AsyncAPI page of {service.name!r} ({channels} channel(s)) at {url}; "
        f"the document is at {url}asyncapi.json; Ctrl-C stops\n"
    )
    if not _is_loopback(bound_host):
        sys.stderr.write(
            f"warning: {host} is not a loopback address: other machines can read this page\n"
        )
    sys.stderr.flush()
    # The server runs in a thread of its own and this one waits for the signal: an
    # exception raised by a signal handler inside serve_forever() could leave one of its
    # locks held, and shutting down would then wait for ever.
    stopping: list[int] = []
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: stopping.append(signum))
    serving = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True
    )
    try:
        # Inside the try: on a busy machine the page may be served (and Ctrl-C pressed)
        # before start() returns here.
        serving.start()
        while not stopping and serving.is_alive():
            time.sleep(0.1)
    except KeyboardInterrupt:
        pass
    finally:
        if serving.ident is not None:  # shutdown() waits for a serve_forever() to end
            httpd.shutdown()
            serving.join()
        httpd.server_close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return OK


def _is_loopback(host: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
