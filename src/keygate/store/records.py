"""What goes into the store and comes out of it: the records, the errors, the fixed vocabulary.

The ground floor of `keygate.store`: it imports nothing of the store, so every other module of
it (the core's jobs, the drivers, the cipher) may use it. Secrets go in whole and come out whole
(decrypted) in a `KeyRecord`; everything meant for display uses the masked form.
"""

from __future__ import annotations

from dataclasses import dataclass

from keygate.config.keyspec import TIER_MAX, WEIGHT_MAX

__all__ = [
    "KEY_SOURCES",
    "KEY_STATUSES",
    "TIER_MAX",
    "TOMBSTONE_TTL_S",
    "UPDATABLE_FIELDS",
    "WEIGHT_MAX",
    "Changes",
    "DuplicateKey",
    "ImportResult",
    "InvalidKey",
    "KeyRecord",
    "StoreError",
]

KEY_STATUSES = ("active", "cooling", "invalid", "exhausted", "disabled")
KEY_SOURCES = ("env", "config", "api", "cli")
# Fields an admin (or the gateway) may change on a stored key; the secret itself never changes.
UPDATABLE_FIELDS = frozenset(
    {"label", "status", "until", "last_error", "rpm", "max_conn", "rph", "rpd", "tpm", "tph", "tpd"}
    | {"tier", "weight"}  # SPEC §15: lower tiers are spent first; weight is the share in one
)
TOMBSTONE_TTL_S = 7 * 86400  # a reader that has not polled for a week reloads everything


class StoreError(Exception):
    """A store failure the user can act on; the message is one clear line."""


class StoreUnavailable(StoreError):
    """The database cannot be reached or is not writable now (a failover, a restart): the
    operation did not happen, or its outcome is unknown; a later one may succeed."""


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
    tier: int = 0  # lower tiers are spent first (SPEC §15)
    weight: int = 1  # the key's share of the picks inside its tier

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
