"""NATS decentralized authentication for the tests: an operator, its accounts and their users.

What ``nsc`` makes, built here with the ``nkeys`` package (there is no ``nsc``
on the test machines): every identity is a fresh NKey pair from random bytes,
and its JWT is encoded as nats-io/jwt (v2) encodes it:

- header ``{"typ":"JWT","alg":"ed25519-nkey"}``; header, claims and signature
  in base64url without padding, the signature (ed25519, by the issuer's NKey)
  covering ``<header>.<claims>``;
- claims ``jti`` (the SHA-512/256 of the standard claims without ``jti``, in
  base32 without padding), ``iat``, ``iss`` (the issuer's public key),
  ``name``, ``sub`` (the subject's public key) and ``nats`` (``type``
  ``operator``, ``account`` or ``user``, ``version`` 2, and what that type
  carries, as nats-io/jwt's ``New*Claims`` set it: unlimited limits).

The operator signs itself and its accounts; an account signs its users. A
server in operator mode trusts the operator (``operator:``) and knows the
accounts preloaded in its memory resolver (:meth:`Operator.server_config`).
:meth:`User.write_creds` writes the ``.creds`` file a client connects with.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from .process import unavailable

NO_LIMIT = -1


def _nkeys() -> Any:
    try:
        import nkeys
    except ImportError:
        unavailable("the nkeys package is needed: pip install 'microbroker-nats[nkeys]'")
    return nkeys


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


class KeyPair:
    """An NKey pair from 32 random bytes; ``prefix``: ``operator``, ``account`` or ``user``."""

    def __init__(self, prefix: str) -> None:
        nkeys = _nkeys()
        byte = {
            "operator": nkeys.PREFIX_BYTE_OPERATOR,
            "account": nkeys.PREFIX_BYTE_ACCOUNT,
            "user": nkeys.PREFIX_BYTE_USER,
        }[prefix]
        self.seed: str = nkeys.encode_seed(os.urandom(32), byte).decode()
        self._pair = nkeys.from_seed(bytearray(self.seed.encode()))
        self.public_key: str = self._pair.public_key.decode()

    def sign(self, data: bytes) -> bytes:
        return bytes(self._pair.sign(data))


def encode_jwt(
    issuer: KeyPair, subject: str, name: str, kind: str, nats: dict[str, Any] | None = None
) -> str:
    """A JWT of type ``kind`` about ``subject`` signed by ``issuer``, as nats-io/jwt v2 makes it."""
    claims: dict[str, Any] = {
        "iat": int(time.time()),
        "iss": issuer.public_key,
        "name": name,
        "sub": subject,
    }
    # jti: the hash of the standard claims with jti empty (so left out), as jwt's ClaimsData.hash.
    digest = hashlib.new("sha512_256", _json(claims)).digest()
    jti = base64.b32encode(digest).rstrip(b"=").decode()
    claims = {"jti": jti, **claims, "nats": {**(nats or {}), "type": kind, "version": 2}}
    header = _b64(_json({"typ": "JWT", "alg": "ed25519-nkey"}))
    payload = _b64(_json(claims))
    signature = _b64(issuer.sign(f"{header}.{payload}".encode()))
    return f"{header}.{payload}.{signature}"


class Operator:
    """A self-signed operator; :meth:`account` makes accounts it signs."""

    def __init__(self, name: str = "test-operator") -> None:
        self.name = name
        self.keys = KeyPair("operator")
        self.jwt = encode_jwt(self.keys, self.keys.public_key, name, "operator")
        self.accounts: list[Account] = []

    def account(self, name: str, *, preload: bool = True) -> Account:
        """An account signed by this operator; preloaded in the server's resolver unless not."""
        account = Account(self, name)
        if preload:
            self.accounts.append(account)
        return account

    def server_config(self) -> str:
        """nats-server settings for operator mode: trust this operator, know its accounts."""
        preload = "\n".join(f'  {a.keys.public_key}: "{a.jwt}"' for a in self.accounts)
        return f'operator: "{self.jwt}"\nresolver: MEMORY\nresolver_preload: {{\n{preload}\n}}'


class Account:
    """An account signed by its operator; :meth:`user` makes users it signs."""

    def __init__(self, operator: Operator, name: str) -> None:
        self.operator = operator
        self.name = name
        self.keys = KeyPair("account")
        limits = {
            "subs": NO_LIMIT,
            "data": NO_LIMIT,
            "payload": NO_LIMIT,
            "imports": NO_LIMIT,
            "exports": NO_LIMIT,
            "wildcards": True,
            "conn": NO_LIMIT,
            "leaf": NO_LIMIT,
        }
        self.jwt = encode_jwt(
            operator.keys, self.keys.public_key, name, "account", {"limits": limits}
        )

    def user(self, name: str) -> User:
        return User(self, name)


class User:
    """A user signed by its account: its JWT and NKey seed make a ``.creds`` file."""

    def __init__(self, account: Account, name: str) -> None:
        self.account = account
        self.name = name
        self.keys = KeyPair("user")
        limits = {"subs": NO_LIMIT, "data": NO_LIMIT, "payload": NO_LIMIT}
        self.jwt = encode_jwt(account.keys, self.keys.public_key, name, "user", limits)

    def creds(self) -> str:
        """The ``.creds`` text, as ``nsc generate creds`` writes it (jwt's FormatUserConfig)."""
        return (
            "-----BEGIN NATS USER JWT-----\n"
            f"{self.jwt}\n"
            "------END NATS USER JWT------\n"
            "\n"
            "************************* IMPORTANT *************************\n"
            "NKEY Seed printed below can be used to sign and prove identity.\n"
            "NKEYs are sensitive and should be treated as secrets.\n"
            "\n"
            "-----BEGIN USER NKEY SEED-----\n"
            f"{self.keys.seed}\n"
            "------END USER NKEY SEED------\n"
            "\n"
            "*************************************************************\n"
        )

    def write_creds(self, path: Path) -> Path:
        path.write_text(self.creds())
        path.chmod(0o600)
        return path
