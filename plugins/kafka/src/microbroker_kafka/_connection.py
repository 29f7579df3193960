"""Connecting: the producer and admin clients, and why a connection failed (TLS, SASL, address)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl

from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]
from aiokafka.admin import AIOKafkaAdminClient  # type: ignore[import-untyped]
from aiokafka.errors import KafkaError as AioKafkaError  # type: ignore[import-untyped]

from .errors import KafkaConnectError
from .options import KafkaOptions

_TLS_PROBE_TIMEOUT = 2.0


async def start_clients(
    settings: KafkaOptions, tls: ssl.SSLContext | None
) -> tuple[AIOKafkaProducer, AIOKafkaAdminClient | None]:
    """Start the producer (and the admin client that creates topics); a clear error if not.

    Raises :class:`~microbroker_kafka.KafkaConnectError` naming the address,
    the SASL mechanism and user (never the password) and what to check.
    """
    producer = AIOKafkaProducer(**settings.producer_kwargs(tls))
    admin = (
        AIOKafkaAdminClient(**settings.common_kwargs(tls)) if settings.auto_create_topics else None
    )
    try:
        await producer.start()
        if admin is not None:
            await admin.start()
    except Exception as exc:
        # aiokafka raises more than its own errors here: a SCRAM exchange the
        # server ends with an error (wrong credentials) surfaces as KeyError.
        with contextlib.suppress(Exception):
            await producer.stop()
        if admin is not None:
            with contextlib.suppress(Exception):
                await admin.close()
        # aiokafka only says it could not bootstrap: ask the TLS handshake why.
        handshake = await tls_problem(settings, tls) if tls is not None else None
        raise KafkaConnectError(connect_failure(settings, exc, handshake)) from exc
    return producer, admin


async def tls_problem(settings: KafkaOptions, tls: ssl.SSLContext) -> str | None:
    """What a TLS handshake with the first bootstrap server says when it fails, else ``None``.

    ``None`` also when the server cannot be reached at all: not a TLS matter.
    """
    host, _, port = settings.bootstrap_servers[0].rpartition(":")
    host = host.strip("[]")
    wait = min(settings.request_timeout, _TLS_PROBE_TIMEOUT)
    try:
        _, plain = await asyncio.wait_for(asyncio.open_connection(host, int(port)), wait)
    except (OSError, TimeoutError, ValueError):
        return None
    plain.close()
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(host, int(port), ssl=tls, server_hostname=host), wait
        )
    except ssl.SSLCertVerificationError as exc:
        refused = exc.verify_message
        return f"the TLS handshake failed: the server's certificate was refused: {refused}"
    except TimeoutError:
        return f"the server did not answer a TLS handshake within {wait:g}s"
    except (ssl.SSLError, OSError) as exc:
        return f"the TLS handshake failed ({type(exc).__name__}: {exc})"
    writer.close()
    return None


def connect_failure(s: KafkaOptions, exc: Exception, handshake: str | None = None) -> str:
    """Why ``connect()`` failed, with what to check for the options in use."""
    where = ",".join(s.bootstrap_servers)
    tls = s.security_protocol in ("SSL", "SASL_SSL")
    if handshake is not None:
        cause = handshake
    elif isinstance(exc, AioKafkaError | OSError):
        cause = str(exc)
    elif s.sasl_mechanism is not None:
        # A SCRAM exchange the server ends with an error instead of its proof.
        cause = f"authentication failed (aiokafka: {type(exc).__name__}: {exc})"
    else:
        cause = f"{type(exc).__name__}: {exc}"
    if s.sasl_mechanism is not None:
        over = " over TLS" if tls else ""
        return (
            f"cannot connect to kafka at {where}{over} with SASL {s.sasl_mechanism} as user "
            f"{s.sasl_username!r}: {cause}; check sasl_username and sasl_password, and that "
            f"the server offers {s.sasl_mechanism}{over} on this port"
        )
    if tls:
        return (
            f"cannot connect to kafka at {where} over TLS: {cause}; is the server running, "
            "does it speak TLS on this port, and does the tls context trust its certificate?"
        )
    return (
        f"cannot connect to kafka at {where}: {cause}; is the server running, is the "
        "address host:port right, and does the server require TLS or SASL?"
    )
