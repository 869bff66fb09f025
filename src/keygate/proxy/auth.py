"""Who may use the proxy: the gateway password, wherever the client's SDK puts it."""

from __future__ import annotations

import hmac
from urllib.parse import parse_qsl


def presented_credential(headers: list[tuple[bytes, bytes]], query: bytes) -> bytes | None:
    """The secret the client sent: Bearer, x-api-key, x-goog-api-key, or ?key=."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            if scheme.lower() == b"bearer":
                return token.strip()
        elif name == b"x-api-key" or name == b"x-goog-api-key":
            return value.strip()
    if query and b"key=" in query:
        for k, v in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
            if k == "key":
                return v.encode("latin-1")
    return None


def password_ok(candidate: bytes | None, passwords: list[bytes]) -> bool:
    """Constant-time against every password, so timing tells neither which nor how close."""
    if candidate is None:
        candidate = b""
    ok = False
    for password in passwords:
        ok |= hmac.compare_digest(candidate, password)
    return ok
