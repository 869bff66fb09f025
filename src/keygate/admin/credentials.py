"""The admin credential: ADMIN_PASSWORD, or a random token generated at first start and kept
in the store only as a PBKDF2 hash (printed once in the banner, then forgotten).

Depends on the settings and the store only, so the server's start (app.py, workers.py) sets it
up beside the gateway and the admin API checks against it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

from keygate.config.settings import Settings
from keygate.store.base import Store

TOKEN_META = "admin_token_hash"
VERIFIED_TTL_S = 60.0  # the admin page polls: a verified token skips PBKDF2 this long
VERIFIED_MAX = 64


def hash_token(token: str, salt: str | None = None) -> str:
    salt = salt or secrets.token_hex(16)
    digest = hashlib.pbkdf2_hmac("sha256", token.encode(), bytes.fromhex(salt), 100_000).hex()
    return f"pbkdf2${salt}${digest}"


def verify_token(token: str, stored: str) -> bool:
    try:
        _, salt, _ = stored.split("$")
    except ValueError:
        return False
    return hmac.compare_digest(hash_token(token, salt), stored)


class AdminCredentials:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.token_hash = ""
        self.new_token = ""  # shown once in the banner, then forgotten
        self._verified: dict[bytes, float] = {}

    async def load(self, store: Store) -> None:
        """Read the token hash, or make the token at first start (when there is no password)."""
        if self.settings.admin_password:
            return
        stored = await store.get_meta(TOKEN_META)
        if stored:
            self.token_hash = stored
            return
        token = "kg-admin-" + secrets.token_urlsafe(24)
        self.token_hash = hash_token(token)
        await store.set_meta(TOKEN_META, self.token_hash)
        self.new_token = token

    def ok(self, candidate: bytes | None) -> bool:
        """Constant-time; remembered briefly so the admin page's polling doesn't pay PBKDF2."""
        if not candidate:
            return False
        if self.settings.admin_password:
            return hmac.compare_digest(candidate, self.settings.admin_password.encode())
        now = time.monotonic()
        seen = self._verified.get(candidate)
        if seen is not None and now - seen < VERIFIED_TTL_S:
            return True
        if verify_token(candidate.decode("latin-1"), self.token_hash):
            if len(self._verified) > VERIFIED_MAX:
                self._verified.clear()
            self._verified[candidate] = now
            return True
        return False

    def fingerprint(self) -> str:
        """Changes whenever the admin credential does, and reveals nothing about it."""
        password = self.settings.admin_password
        if password:
            return "password:" + hashlib.sha256(password.encode()).hexdigest()
        return "token:" + hashlib.sha256(self.token_hash.encode()).hexdigest()
