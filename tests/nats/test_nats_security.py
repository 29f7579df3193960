"""TLS, NKey and credentials-file (JWT) authentication, each against a real nats-server.

The servers' certificates come from a CA made per server with the ``openssl``
command (``support.certificates``); NKeys are made from random bytes and the
operator, account and user JWTs are built by ``support.nats_jwt``. Every failed
connection is bounded by ``_BOUND``: nats-py alone waits forever after a failed
TLS handshake, and reads forever a ``.creds`` file without a user JWT.
"""

from __future__ import annotations

import asyncio
import ssl
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from nats_helpers import Recorder, eventually
from support.certificates import CertificateAuthority
from support.nats_jwt import KeyPair, Operator
from support.nats_server import NatsServer

import microbroker
from microbroker_nats import NatsAuthError, NatsBroker, NatsConnectError

#: Seconds a refused connect() may take at most (it takes well under one; a
#: hang is what this catches). Above two connect_timeouts, for the timeout cases.
_BOUND = 15.0


async def refused(broker: NatsBroker) -> Exception:
    """The exception ``connect()`` raises, within :data:`_BOUND` seconds."""
    try:
        await asyncio.wait_for(broker.connect(), _BOUND)
    except TimeoutError:
        pytest.fail(f"connect() hung for {_BOUND}s instead of failing")
    except Exception as exc:
        assert not broker.connected
        return exc
    await broker.disconnect()
    pytest.fail("connect() succeeded where it must be refused")


async def round_trip(broker: NatsBroker, topic: str) -> None:
    """Subscribe, publish, and see the message come back through the server."""
    inbox = Recorder()
    await broker.subscribe(topic, inbox)
    await broker.publish(topic, microbroker.Message(b"sealed", {"K": "v"}))
    await eventually(lambda: inbox.bodies == [b"sealed"], f"delivery on {topic}")
    assert inbox.deliveries[0].message.headers["K"] == "v"


def tls_version(broker: NatsBroker) -> str | None:
    """The TLS version of the broker's connection, or ``None`` for plaintext."""
    writer: Any = broker.client._transport._io_writer
    ssl_object = writer.get_extra_info("ssl_object")
    return None if ssl_object is None else str(ssl_object.version())


def plain_url(server: NatsServer) -> str:
    return f"nats://127.0.0.1:{server.port}"


# TLS ----------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["tls", "nats"])
async def test_tls_with_the_servers_ca_file(
    new_nats_server: Callable[..., NatsServer], scheme: str
) -> None:
    """tls_ca_file trusts the server's CA; a nats:// address is upgraded as the server asks."""
    server = new_nats_server(tls=True)
    url = server.url if scheme == "tls" else plain_url(server)
    async with NatsBroker(url, tls_ca_file=str(server.ca_file)) as broker:
        assert tls_version(broker) in ("TLSv1.2", "TLSv1.3")
        await round_trip(broker, "tls.ca")


async def test_tls_connection_reconnects_over_tls(
    new_nats_server: Callable[..., NatsServer],
) -> None:
    """After a server restart the broker reconnects, with TLS again, and its subscription works."""
    server = new_nats_server(tls=True)
    ca = str(server.ca_file)
    async with NatsBroker(server.url, tls_ca_file=ca, reconnect_time_wait=0.1) as broker:
        inbox = Recorder()
        await broker.subscribe("tls.again", inbox)
        server.restart()
        await eventually(lambda: broker.client.stats["reconnects"] == 1, "a reconnection")
        await eventually(lambda: broker.client.is_connected, "the reconnection")
        assert tls_version(broker) is not None
        await broker.publish("tls.again", microbroker.Message(b"again"))
        await eventually(lambda: inbox.bodies == [b"again"], "delivery after reconnecting")


async def test_tls_with_an_ssl_context_and_a_hostname(
    new_nats_server: Callable[..., NatsServer],
) -> None:
    """tls= takes a ready context; tls_hostname= names the host the certificate is for."""
    server = new_nats_server(tls=True)
    context = ssl.create_default_context(cafile=str(server.ca_file))
    async with NatsBroker(server.url, tls=context) as broker:
        assert tls_version(broker) is not None
        await round_trip(broker, "tls.context")
    # The certificate names 127.0.0.1 only: through "localhost" it does not match...
    by_name = f"tls://localhost:{server.port}"
    error = await refused(NatsBroker(by_name, tls=context, reconnect_time_wait=0.05))
    assert isinstance(error, NatsConnectError)
    assert "does not trust" in str(error)
    assert "tls_hostname=" in str(error)
    # ...unless told which name to check.
    async with NatsBroker(by_name, tls=context, tls_hostname="127.0.0.1") as broker:
        await round_trip(broker, "tls.hostname")


async def test_untrusted_server_certificate_is_a_clear_error(
    new_nats_server: Callable[..., NatsServer], tmp_path: Path
) -> None:
    """A server whose CA is not trusted: NatsConnectError at once (nats-py alone hangs)."""
    server = new_nats_server(tls=True)
    stranger = CertificateAuthority(tmp_path, "stranger")
    for options in ({}, {"tls_ca_file": str(stranger.cert_file)}):
        error = await refused(NatsBroker(server.url, reconnect_time_wait=0.05, **options))
        assert isinstance(error, NatsConnectError)
        assert not isinstance(error, NatsAuthError)
        message = str(error)
        assert server.url in message
        assert "TLS certificate this broker does not trust" in message
        assert "unable to get local issuer certificate" in message
        assert "tls_ca_file=" in message


async def test_server_requiring_tls_refuses_a_client_without_tls_options(
    new_nats_server: Callable[..., NatsServer],
) -> None:
    """A nats:// client with no TLS options meets a TLS-only server: the same clear error.

    nats-py always upgrades when the server requires TLS, trusting the system's
    CAs only, so it is the certificate that fails, and the message says what to give.
    """
    server = new_nats_server(tls=True)
    error = await refused(NatsBroker(plain_url(server), reconnect_time_wait=0.05))
    assert isinstance(error, NatsConnectError)
    assert "does not trust" in str(error)
    assert "tls_ca_file=" in str(error)


@pytest.mark.parametrize("ask", ["tls_ca_file", "tls://"])
async def test_tls_client_refuses_a_server_without_tls(
    new_nats_server: Callable[..., NatsServer], tmp_path: Path, ask: str
) -> None:
    """A client asked for TLS does not fall back to plaintext (nats-py alone would)."""
    server = new_nats_server(token="not-for-plaintext")
    ca = CertificateAuthority(tmp_path)
    options: dict[str, Any] = {"token": "not-for-plaintext", "reconnect_time_wait": 0.05}
    if ask == "tls://":
        broker = NatsBroker(server.url.replace("nats://", "tls://"), **options)
    else:
        broker = NatsBroker(server.url, tls_ca_file=str(ca.cert_file), **options)
    error = await refused(broker)
    assert isinstance(error, NatsConnectError)
    assert not isinstance(error, NatsAuthError)
    assert "does not offer TLS" in str(error)


async def test_tls_client_upgrades_where_tls_is_optional(
    new_nats_server: Callable[..., NatsServer],
) -> None:
    """A server offering TLS without requiring it (allow_non_tls): TLS for a TLS client."""
    server = new_nats_server(tls=True, tls_allow_non_tls=True)
    async with NatsBroker(plain_url(server), tls_ca_file=str(server.ca_file)) as secure:
        assert tls_version(secure) is not None
        await round_trip(secure, "optional.tls")
    async with NatsBroker(plain_url(server)) as plain:
        assert tls_version(plain) is None
        await round_trip(plain, "optional.plain")


async def test_mutual_tls(new_nats_server: Callable[..., NatsServer], tmp_path: Path) -> None:
    """A server that verifies clients takes a certificate from its CA, and only that."""
    server = new_nats_server(tls=True, tls_verify=True)
    assert server.authority is not None
    client = server.authority.issue("client", client=True)
    ca = str(server.ca_file)
    async with NatsBroker(
        server.url,
        tls_ca_file=ca,
        tls_cert_file=str(client.cert_file),
        tls_key_file=str(client.key_file),
    ) as broker:
        await round_trip(broker, "mtls.ok")

    error = await refused(NatsBroker(server.url, tls_ca_file=ca, reconnect_time_wait=0.05))
    assert isinstance(error, NatsConnectError)
    assert "tls_cert_file=" in str(error)

    intruder = CertificateAuthority(tmp_path, "intruder-ca").issue("intruder", client=True)
    error = await refused(
        NatsBroker(
            server.url,
            tls_ca_file=ca,
            tls_cert_file=str(intruder.cert_file),
            tls_key_file=str(intruder.key_file),
            reconnect_time_wait=0.05,
        )
    )
    assert isinstance(error, NatsConnectError)
    assert "tls_cert_file=" in str(error)


async def test_tls_handshake_first(new_nats_server: Callable[..., NatsServer]) -> None:
    """handshake_first (nats-server 2.10.4+): TLS before INFO, when both sides say so."""
    server = new_nats_server(tls=True, tls_handshake_first=True)
    ca = str(server.ca_file)
    async with NatsBroker(server.url, tls_ca_file=ca, tls_handshake_first=True) as broker:
        assert tls_version(broker) is not None
        await round_trip(broker, "tls.first")
    # Without the option the client waits for an INFO that never comes.
    error = await refused(
        NatsBroker(server.url, tls_ca_file=ca, connect_timeout=0.5, reconnect_time_wait=0.05)
    )
    assert isinstance(error, NatsConnectError)
    assert "tls_handshake_first=True" in str(error)


async def test_tls_handshake_first_needs_a_server_that_expects_it(
    new_nats_server: Callable[..., NatsServer],
) -> None:
    server = new_nats_server(tls=True)
    error = await refused(
        NatsBroker(
            server.url,
            tls_ca_file=str(server.ca_file),
            tls_handshake_first=True,
            connect_timeout=0.5,
            reconnect_time_wait=0.05,
        )
    )
    assert isinstance(error, NatsConnectError)
    assert "handshake_first" in str(error)


async def test_unreadable_tls_files_name_the_option(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing-ca.pem")
    broker = NatsBroker("tls://127.0.0.1:1", tls_ca_file=missing)
    with pytest.raises(ValueError, match=r"tls_ca_file .*missing-ca\.pem"):
        await broker.connect()
    garbage = tmp_path / "client.pem"
    garbage.write_text("not a certificate\n")
    broker = NatsBroker("tls://127.0.0.1:1", tls_cert_file=str(garbage), tls_key_file=str(garbage))
    with pytest.raises(ValueError, match=r"tls_cert_file/tls_key_file .*client\.pem"):
        await broker.connect()


# NKey ---------------------------------------------------------------------------------


def _seed_file(path: Path, keys: KeyPair) -> str:
    path.write_text(keys.seed + "\n")
    path.chmod(0o600)
    return str(path)


async def test_nkey_seed(new_nats_server: Callable[..., NatsServer], tmp_path: Path) -> None:
    """The server lists the user's public key; the seed's signature of its nonce is accepted."""
    user, other = KeyPair("user"), KeyPair("user")
    server = new_nats_server(nkeys=[user.public_key])
    async with NatsBroker(server.url, nkey_seed=_seed_file(tmp_path / "user.nk", user)) as broker:
        await round_trip(broker, "nkey.ok")
    for options in ({"nkey_seed": _seed_file(tmp_path / "other.nk", other)}, {}):
        error = await refused(NatsBroker(server.url, reconnect_time_wait=0.05, **options))
        assert isinstance(error, NatsAuthError)
        assert "refused the credentials" in str(error)
        assert "nkey_seed=" in str(error)


async def test_nkey_seed_file_that_holds_no_seed(tmp_path: Path) -> None:
    not_a_seed = tmp_path / "user.nk"
    not_a_seed.write_text("UABCDEF (a public key, not a seed)\n")
    with pytest.raises(ValueError, match=r"does not hold a valid NKey seed"):
        await NatsBroker("nats://127.0.0.1:1", nkey_seed=str(not_a_seed)).connect()
    with pytest.raises(ValueError, match=r"cannot read the nkey_seed file .*absent\.nk"):
        await NatsBroker("nats://127.0.0.1:1", nkey_seed=str(tmp_path / "absent.nk")).connect()


@pytest.mark.parametrize("option", ["nkey_seed", "credentials"])
def test_missing_nkeys_package_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, option: str
) -> None:
    """Without the nkeys package the broker says which extra to install, when it is made."""
    monkeypatch.setitem(sys.modules, "nkeys", None)  # import nkeys now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'microbroker-nats\[nkeys\]'"):
        NatsBroker("nats://127.0.0.1:1", **{option: str(tmp_path / "secret")})


# Credentials file (operator mode, JWT) ------------------------------------------------


async def test_credentials_file(new_nats_server: Callable[..., NatsServer], tmp_path: Path) -> None:
    """A .creds file of a user of an account the server knows is accepted; others are not."""
    operator = Operator()
    user = operator.account("app").user("alice")
    server = new_nats_server(operator=operator)
    creds = str(user.write_creds(tmp_path / "alice.creds"))
    async with NatsBroker(server.url, credentials=creds) as broker:
        await round_trip(broker, "creds.ok")

    # A user signed by an account the server does not know (another operator's).
    mallory = Operator("other").account("other").user("mallory")
    # The right user JWT, with a seed that is not the user's: the nonce's signature fails.
    forged = operator.accounts[0].user("bob")
    forged.keys = KeyPair("user")
    for refused_creds in (
        mallory.write_creds(tmp_path / "mallory.creds"),
        forged.write_creds(tmp_path / "forged.creds"),
        None,
    ):
        options = {"credentials": str(refused_creds)} if refused_creds else {}
        error = await refused(NatsBroker(server.url, reconnect_time_wait=0.05, **options))
        assert isinstance(error, NatsAuthError), refused_creds
        assert "refused the credentials" in str(error)
        assert "credentials=" in str(error)


async def test_credentials_from_the_environment(
    new_nats_server: Callable[..., NatsServer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    operator = Operator()
    user = operator.account("app").user("carol")
    server = new_nats_server(operator=operator)
    monkeypatch.setenv("MICRO_NATS_CREDENTIALS", str(user.write_creds(tmp_path / "carol.creds")))
    async with microbroker.get_broker("nats", address=server.url) as broker:
        assert isinstance(broker, NatsBroker)
        await round_trip(broker, "creds.env")


@pytest.mark.timeout(30)
async def test_file_that_is_not_a_creds_file(
    new_nats_server: Callable[..., NatsServer], tmp_path: Path
) -> None:
    """A seed file given as credentials: a clear error (nats-py alone reads it forever)."""
    operator = Operator()
    user = operator.account("app").user("dave")
    server = new_nats_server(operator=operator)
    seed_only = tmp_path / "dave.nk"
    seed_only.write_text(
        "-----BEGIN USER NKEY SEED-----\n" + user.keys.seed + "\n------END USER NKEY SEED------\n"
    )
    broker = NatsBroker(server.url, credentials=str(seed_only))
    with pytest.raises(ValueError, match=r"not a NATS \.creds file.*BEGIN NATS USER JWT"):
        await asyncio.wait_for(broker.connect(), _BOUND)
    assert not broker.connected
