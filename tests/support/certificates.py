"""Certificates for the tests' TLS servers, made with the ``openssl`` command line.

A :class:`CertificateAuthority` is a self-signed CA made in a server's work
directory; it issues a server certificate for ``127.0.0.1`` (what a client
checks the server against) and client certificates (for servers that verify
their clients). Nothing is downloaded and nothing outlives the directory. Keys
are P-256 (quick to make on a shared machine) and valid for two days.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .process import HOST, unavailable

_DAYS = "2"
_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def openssl_binary() -> str:
    """The ``openssl`` command; without it a TLS test fails under CI and skips elsewhere."""
    openssl = shutil.which("openssl")
    if openssl is None:
        unavailable("openssl is needed to make a test certificate")
    assert openssl is not None
    return openssl


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:3])} failed ({done.returncode}):\n{done.stderr}")


@dataclass(frozen=True)
class Certificate:
    """A certificate and its private key, as PEM files."""

    cert_file: Path
    key_file: Path


class CertificateAuthority:
    """A self-signed CA in ``directory`` (``<name>.crt``, ``<name>.key``) that issues certificates.

    Trusting :attr:`cert_file` (a client's CA file, a server's ``ca_file``)
    trusts every certificate it issued, and nothing else.
    """

    def __init__(self, directory: Path, name: str = "ca", common_name: str | None = None) -> None:
        self.directory = directory
        self.openssl = openssl_binary()
        self.cert_file = directory / f"{name}.crt"
        self.key_file = directory / f"{name}.key"
        _run(
            [
                self.openssl,
                "req",
                "-x509",
                *_KEY,
                "-days",
                _DAYS,
                "-subj",
                f"/CN={common_name or f'microbroker test CA {name}'}",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
                "-keyout",
                str(self.key_file),
                "-out",
                str(self.cert_file),
            ]
        )

    def issue(self, name: str, *, client: bool = False, ip: str = HOST) -> Certificate:
        """A certificate signed by this CA, in ``<name>.crt`` and ``<name>.key``.

        A server certificate (the default) names ``ip`` in its subjectAltName,
        as a client connecting to that address checks; ``client=True`` makes one
        for client authentication, its common name being ``name``.
        """
        cert = Certificate(self.directory / f"{name}.crt", self.directory / f"{name}.key")
        if cert.cert_file == self.cert_file:
            raise ValueError(f"{name!r} is this CA's own name: give the certificate another")
        request = self.directory / f"{name}.csr"
        extensions = self.directory / f"{name}.ext"
        lines = [
            "basicConstraints=critical,CA:FALSE",
            "subjectKeyIdentifier=hash",
            "authorityKeyIdentifier=keyid",
        ]
        if client:
            lines += ["keyUsage=critical,digitalSignature", "extendedKeyUsage=clientAuth"]
        else:
            lines += [
                "keyUsage=critical,digitalSignature,keyEncipherment",
                "extendedKeyUsage=serverAuth",
                f"subjectAltName=IP:{ip}",
            ]
        extensions.write_text("\n".join(lines) + "\n")
        subject = f"/CN={name}" if client else f"/CN={ip}"
        _run(
            [
                self.openssl,
                "req",
                "-new",
                *_KEY,
                "-subj",
                subject,
                "-keyout",
                str(cert.key_file),
                "-out",
                str(request),
            ]
        )
        _run(
            [
                self.openssl,
                "x509",
                "-req",
                "-in",
                str(request),
                "-CA",
                str(self.cert_file),
                "-CAkey",
                str(self.key_file),
                "-CAcreateserial",
                "-days",
                _DAYS,
                "-extfile",
                str(extensions),
                "-out",
                str(cert.cert_file),
            ]
        )
        return cert
