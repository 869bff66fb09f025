"""Who may use the admin API and page: the admin password/token as a Bearer header, or a signed
session cookie set by the page's login. Wrong passwords (Bearer and login form) are charged to
the failed-attempt throttle shared with the proxy; a right one never is.

A session cookie is `v2.<id>.<issued>.<seen>.<mac>`, HMAC-signed under a key derived from the
store's session key (with KEYGATE_SECRET_KEY as a pepper) *and* a hash of the current admin
credential: changing ADMIN_PASSWORD (or the admin token) ends every session. A session ends when
it has not been used for `session_idle_s` (each use re-issues the cookie with a fresh `seen`,
sliding) or SESSION_TTL_S after login, whichever is first. Logout revokes the session id in the
store, so it stays refused after a restart and on every instance sharing the store.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from keygate.admin.credentials import AdminCredentials
from keygate.http.asgi import SESSION_COOKIE, read_cookie
from keygate.observe.logs import log
from keygate.runtime.gateway import Gateway
from keygate.store.base import StoreError, StoreUnavailable

CSRF_HEADER = b"x-keygate-csrf"  # required with cookie auth on unsafe methods
SESSION_TTL_S = 7 * 24 * 3600  # absolute cap after login, however active the session
REFRESH_AFTER_S = 60  # re-issue the cookie at most this often (sooner with a short idle limit)
CLOCK_SKEW_S = 30  # instances sharing a store may disagree on the time by this much
SCOPE_COOKIE = "keygate.session_cookie"  # (token, max_age) to send back, set by check()
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_TOKEN_RE = re.compile(r"v2\.([A-Za-z0-9_-]{22})\.(\d{1,12})\.(\d{1,12})\.([0-9a-f]{64})")


@dataclass(slots=True, frozen=True)
class Session:
    id: str
    issued: int
    seen: int


class AdminAuth:
    def __init__(self, gateway: Gateway, credentials: AdminCredentials) -> None:
        self.gateway = gateway
        self.credentials = credentials
        self.idle_s = gateway.settings.session_idle_s
        self._base: bytes | None = None
        self._keys: dict[str, bytes] = {}  # admin credential fingerprint -> MAC key

    # --- the MAC key ----------------------------------------------------------------------------
    async def _session_key(self) -> bytes:
        if self._base is None:
            store = self.gateway.store
            value = await store.get_meta("session_key")
            if not value:
                value = secrets.token_hex(32)
                await store.set_meta("session_key", value)
            # With KEYGATE_SECRET_KEY set, a copy of the database alone cannot forge sessions.
            pepper = self.gateway.settings.secret_key.encode()
            self._base = hashlib.sha256(bytes.fromhex(value) + pepper).digest()
        credential = self.credentials.fingerprint()
        key = self._keys.get(credential)
        if key is None:
            key = hmac.new(
                self._base, b"admin-credential:" + credential.encode(), "sha256"
            ).digest()
            self._keys = {credential: key}
        return key

    async def _mac(self, body: str) -> str:
        return hmac.new(await self._session_key(), body.encode(), hashlib.sha256).hexdigest()

    # --- sessions -------------------------------------------------------------------------------
    async def new_session(self) -> str:
        now = int(time.time())
        return await self._token(Session(secrets.token_urlsafe(16), now, now))

    async def _token(self, session: Session) -> str:
        body = f"v2.{session.id}.{session.issued}.{session.seen}"
        return f"{body}.{await self._mac(body)}"

    def max_age(self, token: str) -> int:
        """Seconds the browser should keep a cookie we just issued."""
        m = _TOKEN_RE.fullmatch(token)
        issued = int(m.group(2)) if m else int(time.time())
        return max(0, issued + SESSION_TTL_S - int(time.time()))

    async def session(self, token: str) -> Session | None:
        """The live session this cookie belongs to, or None (forged, malformed, idle, expired,
        revoked, or signed for another admin credential)."""
        if not token.isascii():
            return None
        m = _TOKEN_RE.fullmatch(token)
        if m is None:
            return None
        sid, issued_s, seen_s, mac = m.groups()
        expected = await self._mac(f"v2.{sid}.{issued_s}.{seen_s}")
        if not hmac.compare_digest(mac.encode(), expected.encode()):
            return None
        issued, seen, now = int(issued_s), int(seen_s), time.time()
        if now >= issued + SESSION_TTL_S or now >= seen + self.idle_s:
            return None
        if seen < issued or issued > now + CLOCK_SKEW_S:
            return None
        try:
            if await self.gateway.store.session_revoked(sid):
                return None
        except StoreUnavailable:
            raise  # refused all the same, as the outage it is (503), not as a logout (401)
        except StoreError as exc:
            log.warning("admin session refused: cannot read revocations: %s", exc)
            return None
        return Session(sid, issued, seen)

    async def session_ok(self, token: str) -> bool:
        return await self.session(token) is not None

    async def refreshed(self, session: Session) -> str | None:
        """A re-issued cookie with `seen` = now when the one presented is getting old."""
        now = int(time.time())
        if now - session.seen < min(REFRESH_AFTER_S, max(1, self.idle_s // 4)):
            return None
        return await self._token(Session(session.id, session.issued, now))

    async def revoke(self, token: str) -> bool:
        """End the session this cookie belongs to, on every instance sharing the store."""
        session = await self.session(token)
        if session is None:
            return False
        # No token of this session can outlive its cap, nor be idle-valid after now + idle.
        until = min(session.issued + SESSION_TTL_S, time.time() + self.idle_s + CLOCK_SKEW_S)
        await self.gateway.store.revoke_session(session.id, until)
        return True

    # --- requests -------------------------------------------------------------------------------
    async def check(self, scope: dict[str, Any]) -> bool:
        """True when the request carries valid admin credentials (and, for a cookie on an
        unsafe method, the CSRF header the page sends). A cookie due for refresh leaves its
        successor in the scope under SCOPE_COOKIE for the response."""
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
            return self.credentials.ok(bearer)
        if not cookie:
            return False
        session = await self.session(cookie)
        if session is None or not (scope["method"] in _SAFE_METHODS or csrf):
            return False
        fresh = await self.refreshed(session)
        if fresh is not None:
            scope[SCOPE_COOKIE] = (fresh, self.max_age(fresh))
        return True

    async def password_ok(self, password: str) -> bool:
        """The login form's check: constant time, like the Bearer one."""
        return self.credentials.ok(password.encode())

    def failed(self, scope: dict[str, Any], what: str) -> float:
        """Charge a wrong admin password to the throttle: 0.0 → answer 401, else 429 with that
        Retry-After. Logged while under the limit only, so a storm cannot flood the log."""
        address, wait = self.gateway.throttle.failed(scope)
        if wait == 0:
            log.warning("%s: wrong admin credentials from %s", what, address)
        return wait


def session_cookie(token: str, max_age: int, https: bool) -> bytes:
    cookie = f"{SESSION_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}"
    return (cookie + "; Secure" if https else cookie).encode()
