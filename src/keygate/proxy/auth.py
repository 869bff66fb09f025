"""Who may use the proxy: the gateway password, wherever the client's SDK puts it."""

from __future__ import annotations

import hmac
import math
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes

from keygate.dialects import CREDENTIAL_HEADERS
from keygate.http.errors import GatewayError, retry_after_headers

if TYPE_CHECKING:
    from keygate.runtime.gateway import Gateway

_KEY_PARAM = b"key"
# the headers an SDK puts its key in as is (x-api-key, x-goog-api-key, …): one per dialect
_RAW_CREDENTIALS = CREDENTIAL_HEADERS - {b"authorization"}


def split_key_param(query: bytes) -> tuple[bytes | None, bytes]:
    """(the first `key` parameter's value, the query without any `key` parameter).

    Parameter names are decoded once (`%6Bey` is `key`), and the same decoded names decide both
    what counts as the credential and what is kept from the upstream, so nothing that can
    authenticate is ever forwarded. Every other parameter keeps the bytes the client sent."""
    if not query or (b"ey" not in query and b"%" not in query):
        return None, query
    credential: bytes | None = None
    kept: list[bytes] = []
    stripped = False
    for part in query.split(b"&"):
        raw_name, _, raw_value = part.partition(b"=")
        if _decode(raw_name) == _KEY_PARAM:
            if credential is None:
                credential = _decode(raw_value)
            stripped = True
        else:
            kept.append(part)
    return credential, b"&".join(kept) if stripped else query


def _decode(component: bytes) -> bytes:
    """Form decoding, to bytes: never fails, whatever the client sent (`%ff` stays a byte)."""
    if b"%" not in component and b"+" not in component:
        return component
    return unquote_to_bytes(component.replace(b"+", b" "))


def presented_credential(
    headers: list[tuple[bytes, bytes]], query_key: bytes | None
) -> bytes | None:
    """The secret the client sent: Bearer, any dialect's key header (x-api-key,
    x-goog-api-key), or ?key= (`query_key`, from `split_key_param`)."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            if scheme.lower() == b"bearer":
                return token.strip()
        elif name in _RAW_CREDENTIALS:
            return value.strip()
    return query_key


def password_ok(candidate: bytes | None, passwords: list[bytes]) -> bool:
    """Constant-time against every password, so timing tells neither which nor how close."""
    if candidate is None:
        candidate = b""
    ok = False
    for password in passwords:
        ok |= hmac.compare_digest(candidate, password)
    return ok


def refused(gw: Gateway, scope: dict[str, Any], query_key: bytes | None) -> GatewayError:
    """The answer to a wrong or missing gateway password: 401, or 429 with Retry-After once
    this client (or everyone together) has failed too often. Only called after the check said
    no, so a right password never meets the throttle; a request with no password at all guesses
    nothing and is not charged."""
    if presented_credential(scope["headers"], query_key):
        address, wait = gw.throttle.failed(scope)
        if wait > 0:
            return GatewayError(
                429,
                f"too many wrong gateway passwords from {address}; retry in {math.ceil(wait)}s",
                "auth_throttled",
                retry_after_headers(wait),
                retry=False,  # the same wrong password will not get better by retrying
            )
    return GatewayError(401, "invalid or missing gateway password", "invalid_api_key")
