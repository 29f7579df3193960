"""Connecting to NATS: the connection's set-up and callbacks, and errors that say what to fix."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable

import nats.errors
from nats.aio.client import Client as NATS

from ._client import client_class
from .errors import NatsAuthError, NatsConnectError
from .options import NatsOptions

logger = logging.getLogger("microbroker.broker.nats")

_CLIENT_CERT_HINT = (
    "a server that verifies clients (verify: true) needs tls_cert_file= and tls_key_file=, "
    "a client certificate issued by a CA it trusts"
)


async def open_connection(
    settings: NatsOptions,
    servers: list[str],
    closing: Callable[[], bool],
    closed: Callable[[], None],
    lost: Callable[[], None],
) -> NATS:
    """A connection to a server of ``servers`` that takes it (tried in random order).

    Raises :class:`~microbroker_nats.NatsConnectError` (or
    :class:`~microbroker_nats.NatsAuthError`) saying why no server did and what
    to change; ``ValueError`` for a TLS or credentials file that cannot be used.
    Once connected, a lost connection is retried as the options say
    (``max_reconnect_attempts``); ``closing()`` tells a lost connection from
    the broker's own disconnect, ``lost()`` is called when the connection drops
    (before nats-py reconnects, to the same server or another of the list or of
    the cluster's), and ``closed()`` once the connection is closed for good (by
    the broker, or after the reconnection attempts).
    """
    failures: list[BaseException] = []
    connecting = True

    async def on_error(exc: Exception) -> None:
        if connecting:
            failures.append(exc)
        else:
            logger.warning("nats: %s", exc or type(exc).__name__)

    async def on_disconnected() -> None:
        # While connecting, a failure is connect()'s error, not a lost connection.
        if connecting:
            return
        lost()
        if not closing():
            logger.warning("nats: disconnected from %s, reconnecting", servers)

    async def on_closed() -> None:
        if not connecting:
            closed()

    async def on_reconnected() -> None:
        url = nc.connected_url
        logger.warning("nats: reconnected to %s", url.netloc if url else "?")

    # Settings that cannot work (a TLS or credentials file) raise here, as themselves.
    connect_kwargs = settings.connect_kwargs()
    nc = client_class(settings.fast_path)()
    try:
        await nc.connect(
            servers=servers,
            error_cb=on_error,
            disconnected_cb=on_disconnected,
            reconnected_cb=on_reconnected,
            closed_cb=on_closed,
            allow_reconnect=True,
            # nats-py counts attempts beyond the first, and treats 0 as "forever".
            max_reconnect_attempts=max(1, settings.connect_attempts - 1),
            **connect_kwargs,
        )
    except Exception as exc:
        with contextlib.suppress(Exception):
            await nc.close()
        raise connect_error(settings, servers, exc, failures) from exc
    connecting = False
    # Connected: from now on a lost connection is retried as configured.
    nc.options["max_reconnect_attempts"] = settings.max_reconnect_attempts
    return nc


def connect_error(
    settings: NatsOptions, servers: list[str], exc: BaseException, failures: list[BaseException]
) -> NatsConnectError:
    """The error for a failed connect: which servers, why, and what to change."""
    causes = [*failures, exc]
    where = ", ".join(servers)
    for cause in causes:
        text = str(cause).lower()
        if isinstance(cause, nats.errors.AuthorizationError) or "authorization" in text:
            return NatsAuthError(
                f"the NATS server at {where} refused the credentials (Authorization "
                "Violation): give the token=, user= and password=, nkey_seed= or "
                "credentials= it expects (or MICRO_NATS_TOKEN...)"
            )
    failed_tls = tls_error(causes, where)
    if failed_tls is not None:
        return failed_tls
    # "no servers available" only says that every attempt failed: say why they did.
    telling = [c for c in causes if not isinstance(c, nats.errors.NoServersError)] or causes
    detail = next(
        (f"{type(c).__name__}: {c}" for c in reversed(telling) if str(c)),
        type(telling[-1]).__name__,
    )
    hint = ""
    if any(isinstance(c, (TimeoutError, asyncio.TimeoutError)) for c in causes):
        hint = (
            "; it did not answer within connect_timeout (a server whose tls block sets "
            "handshake_first answers only a client with tls_handshake_first=True)"
        )
    elif tls_wanted(settings, servers) and any(isinstance(c, ConnectionError) for c in causes):
        hint = f"; it closed the TLS connection: {_CLIENT_CERT_HINT}"
    return NatsConnectError(
        f"cannot connect to NATS at {where} ({detail}): check MICRO_BROKER_ADDRESS "
        "(a comma-separated list of nats://host:port) and that nats-server is running" + hint
    )


def tls_error(causes: list[BaseException], where: str) -> NatsConnectError | None:
    """The error for a failed TLS set-up among ``causes``, saying what to do; or ``None``."""
    for cause in causes:
        if isinstance(cause, nats.errors.SecureConnWantedError):
            return NatsConnectError(
                f"the NATS server at {where} does not offer TLS, and this broker was "
                "asked for TLS (tls=, tls_ca_file=, tls_cert_file= or a tls:// address): "
                "nothing was sent to it; enable TLS on the server, or drop the TLS options"
            )
    for cause in causes:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return NatsConnectError(
                f"the NATS server at {where} presented a TLS certificate this broker does "
                f"not trust ({cause.verify_message}): give tls_ca_file= the CA that issued "
                "it (or tls= an ssl.SSLContext that trusts it), and tls_hostname= the name "
                "in the certificate if it is not the address's host"
            )
    for cause in causes:
        if isinstance(cause, ssl.SSLError):
            reason = cause.reason or str(cause)
            return NatsConnectError(
                f"the TLS handshake with the NATS server at {where} failed ({reason}): "
                f"{_CLIENT_CERT_HINT}; and tls_handshake_first=True needs a server whose "
                "tls block sets handshake_first"
            )
    return None


def tls_wanted(settings: NatsOptions, servers: list[str]) -> bool:
    """Whether the options or an address ask for TLS."""
    return bool(
        settings.tls is not None
        or settings.tls_ca_file
        or settings.tls_cert_file
        or settings.tls_handshake_first
        or any(server.startswith("tls://") for server in servers)
    )


async def close(nc: NATS) -> None:
    """Drain and close ``nc``; close at once when it cannot drain (reconnecting, closed)."""
    try:
        await nc.drain()
    except nats.errors.Error:  # reconnecting or already closed: nothing left to drain
        await nc.close()
