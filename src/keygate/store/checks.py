"""Argument checks of the store's operations: a bad value is a ValueError before any SQL runs."""

from __future__ import annotations

import math
from typing import Any

from keygate.store.records import (
    KEY_SOURCES,
    KEY_STATUSES,
    TIER_MAX,
    UPDATABLE_FIELDS,
    WEIGHT_MAX,
)

MAX_ERROR_LEN = 1000
MAX_SESSION_ID_LEN = 64
MAX_MODEL_NAME_LEN = 200


def check_session_id(session_id: str) -> str:
    if not isinstance(session_id, str) or not 0 < len(session_id) <= MAX_SESSION_ID_LEN:
        raise ValueError(f"a session id is 1 to {MAX_SESSION_ID_LEN} characters of text")
    return session_id


def check_provider(provider: str) -> str:
    if not isinstance(provider, str) or not provider.strip():
        raise ValueError("provider name is empty")
    return provider.strip()


def check_model_name(name: str) -> str:
    if not isinstance(name, str) or not 0 < len(name) <= MAX_MODEL_NAME_LEN:
        raise ValueError(f"model name must be 1 to {MAX_MODEL_NAME_LEN} characters")
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


def check_time(name: str, value: Any) -> float:
    """An epoch time (or any other finite number >= 0) as a float."""
    return float(check_number(name, value, integer=False))


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
            out[name] = check_time(name, value)
        elif name in ("tier", "weight"):
            low, high = (0, TIER_MAX) if name == "tier" else (1, WEIGHT_MAX)
            number = check_number(name, value, integer=True)
            if not low <= number <= high:
                raise ValueError(f"{name} must be {low} to {high}, not {value!r}")
            out[name] = number
        else:  # rpm, rph, rpd, tpm, tph, tpd, max_conn
            out[name] = check_number(name, value, integer=True)
    return out
