"""Client key secrets: `kgc-` + 40 url-safe characters, shown once, stored as a hash."""

from __future__ import annotations

import hashlib
import secrets

PREFIX = "kgc-"
BODY_LEN = 40  # 40 url-safe base64 characters: 240 random bits


def new_key() -> str:
    """A fresh client key (30 random bytes give exactly 40 url-safe characters)."""
    return PREFIX + secrets.token_urlsafe(30)[:BODY_LEN]


def key_hash(secret: bytes | str) -> str:
    """sha256 of the key, hex.

    A plain, fast, unsalted hash is the right tool here, unlike for passwords: the key is 240
    bits from the OS's CSPRNG, so nobody can guess or brute-force it from its hash (salting
    and slow hashes defend low-entropy secrets), and a fast hash lets the request path find the
    client by hash in one dict lookup, the same cost with 10,000 clients as with one."""
    if isinstance(secret, str):
        secret = secret.encode()
    return hashlib.sha256(secret).hexdigest()


def mask(secret: str) -> str:
    """What answers show after creation: the prefix, the first and the last 4 characters."""
    body = secret[len(PREFIX) :] if secret.startswith(PREFIX) else secret
    return f"{PREFIX}{body[:4]}…{body[-4:]}"
