"""Who may use the admin API and page: the admin password/token as a Bearer header, or a signed
session cookie set by the page's login. Wrong attempts are slowed down per client address.

Sessions are stateless HMAC-signed tokens (expiry.nonce.mac) under a key kept in the store, so
they survive restarts and work across instances; logout revokes the token in memory.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from typing import Any

from keygate.gateway import Gateway

SESSION_COOKIE = "keygate_session"
CSRF_HEADER = b"x-keygate-csrf"  # required with cookie auth on unsafe methods
SESSION_TTL_S = 7 * 24 * 3600
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_MAX_DELAY_S = 5.0


class AdminAuth:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._key: bytes | None = None
        self._revoked: dict[str, float] = {}
        self._failures: dict[str, tuple[int, float]] = {}

    async def _session_key(self) -> bytes:
        if self._key is None:
            store = self.gateway.store
            value = await store.get_meta("session_key")
            if not value:
                value = secrets.token_hex(32)
                await store.set_meta("session_key", value)
            # With KEYGATE_SECRET_KEY set, a copy of the database alone cannot forge sessions.
            pepper = self.gateway.settings.secret_key.encode()
            self._key = hashlib.sha256(bytes.fromhex(value) + pepper).digest()
        return self._key

    async def new_session(self) -> str:
        expiry = int(time.time()) + SESSION_TTL_S
        body = f"{expiry}.{secrets.token_urlsafe(16)}"
        mac = hmac.new(await self._session_key(), body.encode(), hashlib.sha256).hexdigest()
        return f"{body}.{mac}"

    async def session_ok(self, token: str) -> bool:
        try:
            expiry_s, nonce, mac = token.split(".")
            expiry = int(expiry_s)
        except ValueError:
            return False
        expected = hmac.new(
            await self._session_key(), f"{expiry_s}.{nonce}".encode(), hashlib.sha256
        ).hexdigest()
        return (
            hmac.compare_digest(mac, expected)
            and expiry > time.time()
            and token not in self._revoked
        )

    def revoke(self, token: str) -> None:
        now = time.time()
        self._revoked = {t: e for t, e in self._revoked.items() if e > now}
        self._revoked[token] = now + SESSION_TTL_S

    async def check(self, scope: dict[str, Any]) -> bool:
        """True when the request carries valid admin credentials (and, for a cookie on an
        unsafe method, the CSRF header the page sends)."""
        bearer: bytes | None = None
        cookie: str | None = None
        csrf = False
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    bearer = token.strip()
            elif name == b"cookie":
                cookie = read_cookie(value.decode("latin-1"), SESSION_COOKIE) or cookie
            elif name == CSRF_HEADER:
                csrf = True
        if bearer is not None:
            return self.gateway.admin_ok(bearer)
        if cookie and await self.session_ok(cookie):
            return scope["method"] in _SAFE_METHODS or csrf
        return False

    async def password_ok(self, scope: dict[str, Any], password: str) -> bool:
        """The login form's check: constant time, slowed down after failures from one address."""
        client = (scope.get("client") or ("?", 0))[0]
        await self.penalty(client)
        ok = self.gateway.admin_ok(password.encode())
        self.note(client, ok)
        return ok

    async def penalty(self, client: str) -> None:
        count, _ = self._failures.get(client, (0, 0.0))
        if count >= 3:
            await asyncio.sleep(min(_MAX_DELAY_S, 0.5 * (count - 2)))

    def note(self, client: str, ok: bool) -> None:
        if ok:
            self._failures.pop(client, None)
            return
        count, _ = self._failures.get(client, (0, 0.0))
        if len(self._failures) > 10_000:
            self._failures.clear()
        self._failures[client] = (count + 1, time.time())


def read_cookie(header: str, name: str) -> str | None:
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None
