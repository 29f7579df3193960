"""The connection to the MQTT server: the gmqtt client, connecting, and the socket under it.

What gmqtt leaves to its user and this broker does here: connect errors that
say what to check, reading paused and resumed (gmqtt has no flow control of
its own), and the packets written in one event-loop iteration gathered into
one socket send.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import gmqtt  # type: ignore[import-untyped]
from gmqtt.mqtt.constants import MQTTv50, MQTTv311  # type: ignore[import-untyped]
from gmqtt.mqtt.handler import MQTTConnectError  # type: ignore[import-untyped]

from .errors import MqttAuthError, MqttConnectError
from .options import MqttOptions

logger = logging.getLogger("microbroker.broker.mqtt")

# CONNACK reason codes that mean "wrong credentials" (MQTT 3.1.1 and MQTT 5).
_AUTH_CODES = {4, 5, 0x86, 0x87, 0x8C}


def new_client(client_id: str, settings: MqttOptions, storage: Any) -> Any:
    """A ``gmqtt.Client`` for ``settings``; ``storage`` keeps its unacknowledged publishes.

    ``optimistic_acknowledgement`` stays gmqtt's default (on; gmqtt forces it
    under 3.1.1), but no PUBLISH reaches gmqtt's acknowledging code: the
    broker's receive route (``_receiving``) takes them all and the broker
    acknowledges each once its handlers have settled it.
    """
    properties: dict[str, Any] = {}
    if settings.protocol == "5":
        properties["session_expiry_interval"] = settings.session_expiry
        properties["receive_maximum"] = settings.receive_maximum
    client = gmqtt.Client(
        client_id,
        clean_session=settings.clean_start,
        persistent_storage=storage,
        logger=logger,
        **properties,
    )
    client.set_config({"reconnect_retries": settings.reconnect_retries, "reconnect_delay": 0})
    if settings.username is not None:
        client.set_auth_credentials(settings.username, settings.password)
    return client


async def open_connection(
    client: Any, host: str, port: int, secure: bool, settings: MqttOptions
) -> None:
    """Connect ``client``; raise :class:`MqttConnectError` (or :class:`MqttAuthError`) clearly."""
    version = MQTTv50 if settings.protocol == "5" else MQTTv311
    where = f"{host}:{port}"
    tls = settings.ssl_context(secure)
    try:
        await asyncio.wait_for(
            client.connect(host, port, ssl=tls, keepalive=settings.keepalive, version=version),
            settings.connect_timeout,
        )
    except MQTTConnectError as exc:
        await abandon(client)
        code = getattr(exc, "_code", None)
        if code in _AUTH_CODES:
            raise MqttAuthError(
                f"the MQTT server at {where} refused the credentials ({exc}): check "
                "username and password (MICRO_MQTT_USERNAME, MICRO_MQTT_PASSWORD)"
            ) from None
        raise MqttConnectError(
            f"the MQTT server at {where} refused the connection ({exc})"
        ) from None
    except TimeoutError:
        await abandon(client)
        raise MqttConnectError(
            f"the MQTT server at {where} did not accept the connection within "
            f"{settings.connect_timeout}s: is it an MQTT server, and is TLS "
            f"{'on' if tls else 'off'} on both sides?"
        ) from None
    except OSError as exc:
        await abandon(client)
        raise MqttConnectError(
            f"cannot reach the MQTT server at {where}: {exc}. Is it running, and is the "
            "address right? (address=... or MICRO_BROKER_ADDRESS=mqtt://host:port)"
        ) from None
    # Reconnection is paced by gmqtt from now on (the first attempt had none to wait for).
    client.set_config(
        {
            "reconnect_retries": settings.reconnect_retries,
            "reconnect_delay": settings.reconnect_delay,
        }
    )


async def abandon(client: Any) -> None:
    """Stop a client whose first connection failed, so that gmqtt does not retry it forever."""
    with contextlib.suppress(Exception):
        client.stop_reconnect()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(client.disconnect(), 1.0)


def transport_of(client: Any) -> Any:
    """The asyncio transport of ``client``'s current connection, or ``None``."""
    connection = getattr(client, "_connection", None)
    return getattr(connection, "_transport", None)


class Reading:
    """Reading from the socket, paused and resumed: the ``Flow`` of the connection's mailboxes.

    :attr:`held` keeps it paused whatever the mailboxes say (``disconnect()``
    draining: what was received gets handled, the rest stays with the server).
    """

    __slots__ = ("client", "held", "paused")

    def __init__(self) -> None:
        self.client: Any = None
        self.paused = False
        self.held = False

    def pause(self) -> None:
        self.paused = True
        self._apply()

    def resume(self) -> None:
        self.paused = False
        self._apply()

    def _apply(self) -> None:
        transport = transport_of(self.client)
        if transport is None or transport.is_closing():
            return
        with contextlib.suppress(Exception):
            if self.paused or self.held:
                transport.pause_reading()
            else:
                transport.resume_reading()

    def hold(self, held: bool) -> None:
        self.held = held
        self._apply()

    def reapply(self) -> None:
        """A new connection reads from the start: pause it again if it should be."""
        self._apply()


#: Bytes gathered before a write goes out without waiting for the end of the loop iteration.
_COALESCE_LIMIT = 64 * 1024


def coalesce_writes(transport: Any) -> None:
    """Gather the packets written in one event-loop iteration into one socket send.

    gmqtt writes every PUBLISH and every PUBACK to the transport on its own, and
    asyncio makes each a ``send()`` system call: at QoS 1 that was a fifth of the
    time of a publish->deliver round. A publisher that does not wait (its window is
    open) now fills one buffer that goes out when the loop next runs its callbacks,
    or at ``_COALESCE_LIMIT`` bytes; ``close()`` and ``abort()`` send what is left
    first, so a DISCONNECT written just before is not lost.
    """
    if getattr(transport, "_microbroker_coalesced", False):
        return
    loop = asyncio.get_running_loop()
    write = transport.write
    close = transport.close
    buffer = bytearray()
    scheduled = False

    def flush() -> None:
        nonlocal scheduled
        scheduled = False
        if buffer:
            data = bytes(buffer)
            buffer.clear()
            if not transport.is_closing():
                write(data)

    def buffered_write(data: bytes) -> None:
        nonlocal scheduled
        if len(data) >= _COALESCE_LIMIT:
            # A large packet goes out as it is, after what was gathered: no copy into the buffer.
            flush()
            if not transport.is_closing():
                write(data)
            return
        buffer.extend(data)
        if len(buffer) >= _COALESCE_LIMIT:
            flush()
        elif not scheduled:
            scheduled = True
            loop.call_soon(flush)

    def flushing_close() -> None:
        flush()
        close()

    transport.write = buffered_write
    transport.close = flushing_close
    transport._microbroker_coalesced = True
