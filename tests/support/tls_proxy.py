"""A TLS front for a server that speaks no TLS itself, as stunnel or a load balancer is.

tansu 0.6.0 cannot serve TLS (its ``--cert`` and ``--key`` exclude each other
and its listener never wraps a connection). :class:`TlsProxy` accepts TLS on a
loopback port with a certificate the test made, and passes the decrypted bytes
to the server's plaintext port and back: a client configured for TLS then does
a real handshake, verifies the certificate, and talks to the real server
through it. Run as a child process, like every server of the tests::

    python -m support.tls_proxy LISTEN_PORT UPSTREAM_PORT CERT_FILE KEY_FILE
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import sys
from pathlib import Path

from .process import HOST, ServerProcess

_CHUNK = 256 * 1024


class TlsProxy(ServerProcess):
    """TLS on ``127.0.0.1:<port>`` in front of the plaintext ``upstream_port``."""

    def __init__(
        self,
        upstream_port: int,
        cert_file: Path,
        key_file: Path,
        *,
        port: int | None = None,
        name: str = "tls-proxy",
    ) -> None:
        self.upstream_port = upstream_port

        def argv(port: int) -> list[str]:
            return [
                sys.executable,
                "-m",
                "support.tls_proxy",
                str(port),
                str(upstream_port),
                str(cert_file),
                str(key_file),
            ]

        tests = str(Path(__file__).resolve().parent.parent)
        super().__init__(name, argv, port=port, env={"PYTHONPATH": tests})

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def _serve(port: int, upstream: int, context: ssl.SSLContext) -> None:
    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(HOST, upstream)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(_pipe(client_r, server_w), _pipe(server_r, client_w))

    server = await asyncio.start_server(handle, HOST, port, ssl=context)
    async with server:
        await server.serve_forever()


def main(argv: list[str]) -> None:
    port, upstream, cert_file, key_file = int(argv[0]), int(argv[1]), argv[2], argv[3]
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    asyncio.run(_serve(port, upstream, context))


if __name__ == "__main__":
    main(sys.argv[1:])
