"""The store's names as the rest of keygate imports them: the `Store`, its records and errors.

The store is one core (`store.core.Store`) holding a database driver (`store.sqlite`,
`store.postgres`); its jobs live in modules of their own (see `store.core`). This module only
gathers what callers use: records and errors (`store.records`), pasted-key parsing
(`store.keyinput`) and the masked form of a secret, so nothing outside the store needs to know
where each one lives.
"""

from __future__ import annotations

from keygate.masking import mask
from keygate.store.core import Store
from keygate.store.keyinput import (
    MAX_SECRET_LEN,
    MIN_SECRET_LEN,
    check_secret,
    parse_key_entries,
    parse_key_input,
)
from keygate.store.records import (
    KEY_SOURCES,
    KEY_STATUSES,
    TIER_MAX,
    UPDATABLE_FIELDS,
    WEIGHT_MAX,
    Changes,
    DuplicateKey,
    ImportResult,
    InvalidKey,
    KeyRecord,
    StoreError,
    StoreUnavailable,
)

__all__ = [
    "KEY_SOURCES",
    "KEY_STATUSES",
    "MAX_SECRET_LEN",
    "MIN_SECRET_LEN",
    "TIER_MAX",
    "UPDATABLE_FIELDS",
    "WEIGHT_MAX",
    "Changes",
    "DuplicateKey",
    "ImportResult",
    "InvalidKey",
    "KeyRecord",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "check_secret",
    "mask",
    "parse_key_entries",
    "parse_key_input",
]
