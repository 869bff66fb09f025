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
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

from keygate.control.keypool import mask

if TYPE_CHECKING:
    from keygate.store.clients import ClientRecord

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
    "parse_key_entries",
    "parse_key_input",
]

KEY_STATUSES = ("active", "cooling", "invalid", "exhausted", "disabled")
KEY_SOURCES = ("env", "config", "api", "cli")
MAX_SECRET_LEN = 512
MIN_SECRET_LEN = 8  # every provider's keys are far longer; shorter tokens are paste debris
# Fields an admin (or the gateway) may change on a stored key; the secret itself never changes.
UPDATABLE_FIELDS = frozenset(
    {"label", "status", "until", "last_error", "rpm", "max_conn", "rph", "rpd", "tpm", "tph", "tpd"}
)
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
    rph: int = 0
    rpd: int = 0
    tpm: int = 0
    tph: int = 0
    tpd: int = 0
    day: float = 0.0  # start of the quota day of the counters below (epoch s)
    day_requests: int = 0
    day_tokens: int = 0

    def limits(self) -> tuple[int, int, int, int, int, int]:
        """The key's own quota limits in the order of `control.quota.WINDOWS`."""
        return (self.rpm, self.rph, self.rpd, self.tpm, self.tph, self.tpd)


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
    models_changed: bool = False  # the model table (aliases, groups) changed
    clients_changed: bool = False  # a client key was added, changed or deleted


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


_DEBRIS = _QUOTES + "[]"  # never part of a key: left over from pasted lists and JSON arrays
_JSON_STRING_RE = re.compile(r'"(?:[^"\\]|\\.)*"')


def _unquote(token: str) -> str:
    return token.strip().strip(_DEBRIS).strip()


def _json_strings(text: str) -> list[str] | None:
    """The items of a JSON array of strings, or None when `text` is not one."""
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if isinstance(data, list) and all(isinstance(item, str) for item in data):
        return data
    return None


def parse_key_entries(text: str) -> list[tuple[int, str]]:
    """(line number, token) from pasted text: the whole text as one JSON array of strings, or
    per line a JSON array of strings or anything split on commas/whitespace. The line number
    lets an import report point at the entry it refuses.

    Repeats are kept so a batch import can report them as duplicates.
    """
    stripped = text.strip()
    if stripped.startswith("["):
        items = _json_strings(stripped)
        if items is not None:
            lines = _string_lines(text, items)
            return [(n, tok) for n, tok in zip(lines, map(_unquote, items), strict=True) if tok]
    out: list[tuple[int, str]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        items = _json_strings(line) if line.startswith("[") else None
        tokens = items if items is not None else line.replace(",", " ").split()
        out.extend((number, tok) for tok in map(_unquote, tokens) if tok)
    return out


def _string_lines(text: str, items: list[str]) -> list[int]:
    """The line each item of a JSON array starts on (1 for all when they cannot be matched)."""
    found = [
        (text.count("\n", 0, m.start()) + 1, json.loads(m.group()))
        for m in _JSON_STRING_RE.finditer(text)
    ]
    if [value for _, value in found] != items:
        return [1] * len(items)
    return [line for line, _ in found]


def parse_key_input(text: str) -> list[str]:
    """Tokens from pasted text (see parse_key_entries), without their line numbers."""
    return [token for _, token in parse_key_entries(text)]


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
        """Change label/status/until/last_error and the per-key limits (rpm, rph, rpd, tpm,
        tph, tpd, max_conn); None if the key is gone."""

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
    async def add_day_counters(self, rows: list[tuple[int, float, int, int]]) -> None:
        """(key id, quota day start, requests, tokens) spent since the last flush: added to
        the same day's counters, replacing an older day's (several instances add up)."""

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

    # the model table

    @abc.abstractmethod
    async def get_model_routes(self) -> dict[str, Any]:
        """Aliases and groups set at run time: name → entry as JSON (None hides a config one)."""

    @abc.abstractmethod
    async def set_model_route(self, name: str, spec: Any) -> None:
        """Store one entry (checked by `routing` before); shows in the feed as models_changed."""

    @abc.abstractmethod
    async def delete_model_route(self, name: str) -> bool:
        """Forget one stored entry; False when there was none."""

    # admin sessions

    @abc.abstractmethod
    async def revoke_session(self, session_id: str, expires_at: float) -> None:
        """Refuse this admin session from now on, on every instance of this store, until
        `expires_at` (epoch s, when it would have expired anyway); prunes expired revocations."""

    @abc.abstractmethod
    async def session_revoked(self, session_id: str) -> bool:
        """True when `session_id` was revoked and the revocation has not expired."""

    # change feed

    @abc.abstractmethod
    async def changes_since(self, seq: int) -> Changes:
        """What other writers (CLI, other instances) changed after `seq`."""

    @abc.abstractmethod
    async def current_seq(self) -> int:
        """The feed position now; pass it to changes_since later."""

    # client keys (SPEC §13; `store.clients` has the one implementation)

    @abc.abstractmethod
    async def add_client(self, key_hash: str, masked: str, doc: dict[str, Any]) -> ClientRecord:
        """A new client from checked fields (`keygate.client_fields`); raises ValueError."""

    @abc.abstractmethod
    async def load_clients(self) -> list[ClientRecord]: ...

    @abc.abstractmethod
    async def get_client(self, client_id: int) -> ClientRecord | None: ...

    @abc.abstractmethod
    async def update_client(self, client_id: int, doc: dict[str, Any]) -> ClientRecord | None: ...

    @abc.abstractmethod
    async def delete_client(self, client_id: int) -> bool: ...

    @abc.abstractmethod
    async def add_client_counters(
        self, deltas: list[tuple[int, str, int, int, int, int, float]]
    ) -> None:
        """Additive usage deltas per (client, period)."""

    @abc.abstractmethod
    async def client_usage(self, periods: list[str]) -> dict[int, dict[str, dict[str, Any]]]: ...


# --- validation shared by the store implementations ---------------------------------------

TOMBSTONE_TTL_S = 7 * 86400  # a reader that has not polled for a week reloads everything
MAX_ERROR_LEN = 1000


MAX_SESSION_ID_LEN = 64


def check_session_id(session_id: str) -> str:
    if not isinstance(session_id, str) or not 0 < len(session_id) <= MAX_SESSION_ID_LEN:
        raise ValueError(f"a session id is 1 to {MAX_SESSION_ID_LEN} characters of text")
    return session_id


def like_pattern(q: str) -> str:
    escaped = q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def check_provider(provider: str) -> str:
    if not isinstance(provider, str) or not provider.strip():
        raise ValueError("provider name is empty")
    return provider.strip()


def check_model_name(name: str) -> str:
    if not isinstance(name, str) or not 0 < len(name) <= 200:
        raise ValueError("model name must be 1 to 200 characters")
    return name


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
        else:  # rpm, rph, rpd, tpm, tph, tpd, max_conn
            out[name] = check_number(name, value, integer=True)
    return out


# --- what both implementations share ------------------------------------------------------

MIGRATION_RE = re.compile(r"^(\d{4})_(\w+)\.sql$")
KEY_COLUMNS = """
    k.id, k.provider, k.secret, k.masked, k.label, k.status, k.until, k.last_error, k.source,
    k.created_at, COALESCE(s.use_count, 0), COALESCE(s.last_used, 0), COALESCE(s.ok, 0),
    COALESCE(s.err_4xx, 0), COALESCE(s.err_5xx, 0), COALESCE(s.tokens_in, 0),
    COALESCE(s.tokens_out, 0), k.rpm, k.max_conn, k.rph, k.rpd, k.tpm, k.tph, k.tpd,
    COALESCE(d.day, 0), COALESCE(d.requests, 0), COALESCE(d.tokens, 0)
"""
KEY_SELECT = (
    f"SELECT {KEY_COLUMNS} FROM keys k LEFT JOIN key_stats s ON s.key_id = k.id"
    " LEFT JOIN key_days d ON d.key_id = k.id"
)


def record_from_row(row: Sequence[Any], unseal: Callable[[str], str]) -> KeyRecord:
    """A `KEY_SELECT` row as a KeyRecord, the secret decrypted with `unseal`."""
    return KeyRecord(
        id=row[0],
        provider=row[1],
        secret=unseal(row[2]),
        masked=row[3],
        label=row[4],
        status=row[5],
        until=row[6],
        last_error=row[7],
        source=row[8],
        created_at=row[9],
        use_count=row[10],
        last_used=row[11],
        ok=row[12],
        err_4xx=row[13],
        err_5xx=row[14],
        tokens_in=row[15],
        tokens_out=row[16],
        rpm=row[17],
        max_conn=row[18],
        rph=row[19],
        rpd=row[20],
        tpm=row[21],
        tph=row[22],
        tpd=row[23],
        day=row[24],
        day_requests=row[25],
        day_tokens=row[26],
    )


def load_migrations(dialect: str) -> list[tuple[int, str, str]]:
    """(version, name, sql) of every bundled migration for `dialect`, in order, numbered
    0001.. without gaps."""
    folder = resources.files("keygate.store").joinpath("migrations").joinpath(dialect)
    found = []
    for entry in folder.iterdir():
        m = MIGRATION_RE.match(entry.name)
        if m:
            found.append((int(m.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    found.sort()
    versions = [v for v, _, _ in found]
    if versions != list(range(1, len(versions) + 1)):
        raise StoreError(f"{dialect} migrations are not numbered 0001.. without gaps: {versions}")
    return found


@dataclass(slots=True)
class ImportPlan:
    """A batch import before it meets the database: one result per input token, and the
    distinct valid keys by fingerprint (a repeat in the input points at its first copy)."""

    results: list[ImportResult]
    first: dict[str, int]  # fingerprint -> index of its first occurrence
    repeats: list[tuple[int, str]]  # (index, fingerprint) of later occurrences
    tokens: dict[str, str]  # fingerprint -> the key, first occurrences only

    def finish(self, ids: dict[str, int]) -> list[ImportResult]:
        """Fill in ids once the database said which fingerprints it holds (`ids`)."""
        for fp, index in self.first.items():
            self.results[index].id = ids.get(fp)
        for index, fp in self.repeats:
            self.results[index].id = ids.get(fp)
            self.results[index].message = "repeated in this input"
        return self.results


def plan_import(secrets: Sequence[Any], fingerprint: Callable[[str], str]) -> ImportPlan:
    """Check every token; every valid one starts as "duplicate" until the insert proves it new."""
    plan = ImportPlan([], {}, [], {})
    for i, raw in enumerate(secrets):
        token = raw.strip() if isinstance(raw, str) else ""
        why = check_secret(token)
        if why:
            plan.results.append(ImportResult(mask(token), "invalid", message=why))
            continue
        fp = fingerprint(token)
        plan.results.append(ImportResult(mask(token), "duplicate"))
        if fp in plan.first:
            plan.repeats.append((i, fp))
        else:
            plan.first[fp] = i
            plan.tokens[fp] = token
    return plan
