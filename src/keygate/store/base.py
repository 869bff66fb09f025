"""The store interface: keys, their health and counters, provider overrides, meta, a change feed.

SQLite (`store.sqlite`) and PostgreSQL (`store.postgres`) implement the same `Store` and pass the
same tests (`tests/store`). The rest of keygate only sees these names. Secrets go in whole and
come out whole (decrypted) through `load_keys`/`get_keys`; everything meant for display uses the
masked form.
"""

from __future__ import annotations

import abc
import json
import math
from dataclasses import dataclass
from typing import Any

from keygate.control.keypool import mask

__all__ = [
    "KEY_SOURCES",
    "KEY_STATUSES",
    "MAX_SECRET_LEN",
    "MIN_SECRET_LEN",
    "UPDATABLE_FIELDS",
    "Changes",
    "DuplicateKey",
    "ImportResult",
    "InvalidKey",
    "KeyRecord",
    "Store",
    "StoreError",
    "check_secret",
    "mask",
    "parse_key_input",
]

KEY_STATUSES = ("active", "cooling", "invalid", "exhausted", "disabled")
KEY_SOURCES = ("env", "config", "api", "cli")
MAX_SECRET_LEN = 512
MIN_SECRET_LEN = 8  # every provider's keys are far longer; shorter tokens are paste debris
# Fields an admin (or the gateway) may change on a stored key; the secret itself never changes.
UPDATABLE_FIELDS = frozenset({"label", "status", "until", "last_error", "rpm", "max_conn"})
_QUOTES = "\"'`“”‘’"  # noqa: RUF001 - curly quotes come from pasted text


class StoreError(Exception):
    """A store failure the user can act on; the message is one clear line."""


class DuplicateKey(StoreError):
    """The provider already holds this exact secret."""


class InvalidKey(StoreError):
    """The secret is empty, too long, or has whitespace/control characters inside."""


@dataclass(slots=True)
class KeyRecord:
    """One stored key with its health and counters; `secret` is decrypted."""

    id: int
    provider: str
    secret: str
    masked: str
    label: str = ""
    status: str = "active"  # active | cooling | invalid | exhausted | disabled
    until: float = 0.0  # epoch s: cooling/exhausted end, or next re-check for invalid
    last_error: str = ""
    source: str = "api"  # env | config | api | cli
    created_at: float = 0.0
    use_count: int = 0
    last_used: float = 0.0
    ok: int = 0
    err_4xx: int = 0
    err_5xx: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    rpm: int = 0  # per-key limits, 0 = provider default
    max_conn: int = 0


@dataclass(slots=True)
class ImportResult:
    """The outcome for one token of a batch import; `input` is masked, never the whole secret."""

    input: str
    status: str  # "added" | "duplicate" | "invalid"
    id: int | None = None  # the new key, or the key it duplicates
    message: str = ""


@dataclass(slots=True)
class Changes:
    """What changed in the store after a given seq, so a running server can catch up."""

    seq: int
    key_ids: list[int]  # added or changed since the given seq: re-read them with get_keys
    deleted_ids: list[int]
    providers_changed: bool  # a provider override or meta setting changed
    # The feed no longer reaches back to the given seq (tombstones pruned, or the database was
    # replaced): reload everything with load_keys/get_provider_overrides instead.
    full: bool = False


def check_secret(secret: str) -> str:
    """Why `secret` cannot be a key ("" if it can): keeps junk out of the pools."""
    if not secret:
        return "empty"
    if len(secret) < MIN_SECRET_LEN:
        return f"shorter than {MIN_SECRET_LEN} characters: not an API key"
    if len(secret) > MAX_SECRET_LEN:
        return f"longer than {MAX_SECRET_LEN} characters"
    if any(ch.isspace() or not ch.isprintable() for ch in secret):
        return "contains whitespace or control characters"
    return ""


def _unquote(token: str) -> str:
    token = token.strip()
    while len(token) >= 2 and token[0] in _QUOTES and token[-1] in _QUOTES:
        token = token[1:-1].strip()
    return token


def parse_key_input(text: str) -> list[str]:
    """Tokens from pasted text: a JSON array of strings, or anything split on commas/whitespace.

    Repeats are kept so a batch import can report them as duplicates.
    """
    stripped = text.strip()
    if stripped.startswith("["):
        try:
            data = json.loads(stripped)
        except ValueError:
            data = None
        if isinstance(data, list) and all(isinstance(item, str) for item in data):
            return [tok for tok in (_unquote(item) for item in data) if tok]
    tokens = stripped.replace(",", " ").split()
    return [tok for tok in (_unquote(t) for t in tokens) if tok]


class Store(abc.ABC):
    """Persistent state shared by the server, the CLI and other instances on the same database."""

    @abc.abstractmethod
    async def open(self) -> None:
        """Create the database if needed, apply migrations, check the encryption key."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the connection; safe to call twice."""

    # keys

    @abc.abstractmethod
    async def add_key(
        self, provider: str, secret: str, label: str = "", source: str = "api"
    ) -> KeyRecord:
        """Store one key; raises DuplicateKey (same provider + secret) or InvalidKey."""

    @abc.abstractmethod
    async def add_keys(
        self, provider: str, secrets: list[str], source: str = "api"
    ) -> list[ImportResult]:
        """Import many keys in one transaction; one result per input token, in order."""

    @abc.abstractmethod
    async def load_keys(self, provider: str | None = None) -> list[KeyRecord]:
        """Every key with its secret and counters, oldest first (start-up)."""

    @abc.abstractmethod
    async def get_keys(self, ids: list[int]) -> list[KeyRecord]:
        """The keys that still exist among `ids`, in id order."""

    @abc.abstractmethod
    async def list_keys(
        self,
        provider: str | None = None,
        status: str | None = None,
        q: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[KeyRecord], int]:
        """One page, newest first, and the total under the same filters (admin list)."""

    @abc.abstractmethod
    async def update_key(self, key_id: int, **fields: Any) -> KeyRecord | None:
        """Change label/status/until/last_error/rpm/max_conn; None if the key is gone."""

    @abc.abstractmethod
    async def delete_key(self, key_id: int) -> bool:
        """Delete a key and its counters; False if there was no such key."""

    @abc.abstractmethod
    async def save_health(self, updates: list[tuple[int, str, float, str]]) -> None:
        """Batched (id, status, until, last_error) from the flusher; shows in the change feed."""

    # counters

    @abc.abstractmethod
    async def add_counters(
        self,
        key_deltas: list[tuple[int, int, int, int, int, int, int, float]],
        provider_deltas: dict[str, tuple[int, int, int, int, int, int]],
    ) -> None:
        """Add counter deltas (never overwrite) so several instances' flushes add up.

        key tuple: (id, use_count, ok, err_4xx, err_5xx, tokens_in, tokens_out, last_used),
        last_used is max(old, new); provider tuple: (requests, ok, err_4xx, err_5xx, tokens_in,
        tokens_out).
        """

    @abc.abstractmethod
    async def provider_totals(self) -> dict[str, dict[str, int]]:
        """{provider: {requests, ok, err_4xx, err_5xx, tokens_in, tokens_out}}."""

    @abc.abstractmethod
    async def key_counts(self) -> dict[str, dict[str, int]]:
        """{provider: {status: n}} for the dashboard and the banner."""

    # provider overrides and meta

    @abc.abstractmethod
    async def get_provider_overrides(self) -> dict[str, dict[str, Any]]:
        """Run-time provider settings that win over config and env."""

    @abc.abstractmethod
    async def set_provider_override(self, name: str, fields: dict[str, Any]) -> None:
        """Merge `fields` into the stored override; a None value removes that field."""

    @abc.abstractmethod
    async def get_meta(self, name: str) -> str | None:
        """A small named value (admin token, default model, ...)."""

    @abc.abstractmethod
    async def set_meta(self, name: str, value: str) -> None:
        """Set a small named value; shows in the change feed as providers_changed."""

    # change feed

    @abc.abstractmethod
    async def changes_since(self, seq: int) -> Changes:
        """What other writers (CLI, other instances) changed after `seq`."""

    @abc.abstractmethod
    async def current_seq(self) -> int:
        """The feed position now; pass it to changes_since later."""


# --- validation shared by the store implementations ---------------------------------------

TOMBSTONE_TTL_S = 7 * 86400  # a reader that has not polled for a week reloads everything
MAX_ERROR_LEN = 1000


def like_pattern(q: str) -> str:
    escaped = q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def check_provider(provider: str) -> str:
    if not isinstance(provider, str) or not provider.strip():
        raise ValueError("provider name is empty")
    return provider.strip()


def check_source(source: str) -> str:
    if source not in KEY_SOURCES:
        raise ValueError(f"key source must be one of {', '.join(KEY_SOURCES)}, not {source!r}")
    return source


def check_status(status: Any) -> str:
    if status not in KEY_STATUSES:
        raise ValueError(f"key status must be one of {', '.join(KEY_STATUSES)}, not {status!r}")
    return str(status)


def check_number(name: str, value: Any, integer: bool) -> float | int:
    ok_type = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_type):
        raise ValueError(f"{name} must be a {'whole ' if integer else ''}number, not {value!r}")
    if value < 0 or (not integer and not math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number >= 0, not {value!r}")
    return int(value) if integer else float(value)


def check_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """Validated column values for update_key; unknown names are a programming error."""
    unknown = sorted(set(fields) - UPDATABLE_FIELDS)
    if unknown:
        raise ValueError(f"cannot update key field(s): {', '.join(unknown)}")
    out: dict[str, Any] = {}
    for name, value in fields.items():
        if name == "status":
            out[name] = check_status(value)
        elif name in ("label", "last_error"):
            if not isinstance(value, str):
                raise ValueError(f"{name} must be text, not {value!r}")
            out[name] = value[:MAX_ERROR_LEN] if name == "last_error" else value
        elif name == "until":
            out[name] = check_number(name, value, integer=False)
        else:  # rpm, max_conn
            out[name] = check_number(name, value, integer=True)
    return out
