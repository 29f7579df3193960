"""Opening the http broker to a LAN: a shared secret and TLS, between two hosts found by mDNS.

Host 2 runs a subscriber process that listens on its LAN address with
``MICRO_BROKER_SECRET`` set and serves HTTPS with a certificate for that
address; this test, on host 1, publishes to it with the right secret and the
CA, without the secret, and with a client that does not trust the CA.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest
from mdns_helpers import HostProcess, wait_nodes
from support.certificates import CertificateAuthority
from support.netns import Host, Lan

import microbroker

SECRET = "s3cret-of-the-lan"


async def _publish(broker: microbroker.Broker, body: bytes) -> None:
    await broker.publish("jobs", microbroker.Message(body), confirm=True)


async def test_secret_and_tls_across_hosts(
    lan2: Lan, in_host1: Host, start_host: Callable[..., HostProcess], tmp_path: Path
) -> None:
    h2 = lan2.hosts[1]
    ca = CertificateAuthority(tmp_path)
    cert = ca.issue("h2", ip=h2.address)
    peer = start_host(
        h2,
        {
            "MICRO_BROKER_SECRET": SECRET,
            "MDNS_HOST_TLS_CERT": str(cert.cert_file),
            "MDNS_HOST_TLS_KEY": str(cert.key_file),
        },
    )
    peer.wait_for(lambda e: e["event"] == "ready", "ready")
    trusting = ssl.create_default_context(cafile=str(ca.cert_file))

    def broker(**options: object) -> microbroker.Broker:
        return microbroker.get_broker(
            "http", address=f"{in_host1.address}:0", registry="mdns", **options
        )

    # The right secret and a client that trusts the CA: delivered over HTTPS.
    good = broker(secret=SECRET, client_tls=trusting)
    async with good:
        nodes = await wait_nodes(
            good.registry,  # type: ignore[attr-defined]
            lambda nodes: any(n.metadata.get("topic") == "jobs" for n in nodes),
            "the peer's jobs subscription found",
        )
        secure = {n.metadata["secure"] for n in nodes if n.metadata.get("topic") == "jobs"}
        assert secure == {"true"}  # mDNS carries secure=true: the publisher uses https
        await _publish(good, b"with-secret")

    # No secret: the subscriber answers 401 and the publisher says what to set.
    anonymous = broker(client_tls=trusting)
    async with anonymous:
        with pytest.raises(microbroker.PublishError, match="MICRO_BROKER_SECRET"):
            await _publish(anonymous, b"no-secret")

    # A client that does not trust the certificate never hands the message over, and says why.
    untrusting = broker(secret=SECRET, drain_timeout=0.5)
    async with untrusting:
        with pytest.raises(microbroker.PublishError, match="certificate is not trusted"):
            await asyncio.wait_for(_publish(untrusting, b"untrusted"), 30)

    peer.send("quit")
    peer.wait_for(lambda e: e["event"] == "stopped", "peer stopped")
    assert (tmp_path / f"{h2.name}.jobs").read_text() == "with-secret\n"
