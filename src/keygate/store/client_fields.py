"""What a client may be given (POST/PATCH /api/clients, `keygate clients add|update`), checked
once here so the API, the CLI and the store agree. Errors are `ValueError("field: problem")`.
At the ground floor, beside the clients package, because the store checks with it too."""

from __future__ import annotations

import math
import re
import time
from typing import Any

NAME_MAX = 100
LIMIT_MAX = 10**12  # far above any real budget; keeps SQL in 64 bits
LIST_MAX = 500
ITEM_MAX = 200
LIMITS = ("rpm", "rpd", "tpd", "monthly_tokens")
FIELDS = ("name", *LIMITS, "providers", "models", "expires_at", "enabled")
_PROVIDER = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


def _short(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 40 else shown[:37] + "..."


def _limit(name: str, value: Any) -> int:
    if value is None:
        return 0  # no such limit
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= LIMIT_MAX:
        raise ValueError(
            f"{name}: must be a whole number ≥ 0 (0 or null: no limit), got {_short(value)}"
        )
    return value


def _names(name: str, value: Any, pattern: re.Pattern[str] | None) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > LIST_MAX:
        raise ValueError(f"{name}: must be a list of at most {LIST_MAX} strings")
    out: list[str] = []
    for item in value:
        if not isinstance(item, str) or not item.strip() or len(item) > ITEM_MAX:
            raise ValueError(f"{name}: every item must be a non-empty string, got {_short(item)}")
        item = item.strip()
        if pattern is not None and not pattern.fullmatch(item):
            raise ValueError(f"{name}: {_short(item)} is not a provider name")
        if "*" in item and not (item == "*" or (item.endswith("/*") and "*" not in item[:-2])):
            raise ValueError(f"{name}: {_short(item)}: '*' only as 'provider/*' or '*'")
        if item not in out:
            out.append(item)
    return out


def _expiry(value: Any) -> float:
    """Unix seconds, or an ISO 8601 time (UTC unless it says otherwise); null: never."""
    if value is None or value == 0:
        return 0.0
    if isinstance(value, str):
        from datetime import UTC, datetime

        try:
            moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(
                f"expires_at: not an ISO 8601 time or Unix seconds: {_short(value)}"
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        value = moment.timestamp()
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(
            f"expires_at: must be Unix seconds or an ISO 8601 time, got {_short(value)}"
        )
    if not 0 < value < 1e11:
        raise ValueError(f"expires_at: out of range: {_short(value)}")
    return float(value)


def clean(doc: dict[str, Any], creating: bool) -> dict[str, Any]:
    """The checked fields of `doc` (only those present unless `creating`)."""
    unknown = [k for k in doc if k not in FIELDS]
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown field ({', '.join(FIELDS)})")
    out: dict[str, Any] = {}
    if creating or "name" in doc:
        name = doc.get("name")
        if not isinstance(name, str) or not name.strip() or len(name.strip()) > NAME_MAX:
            raise ValueError(f"name: required, a string of 1 to {NAME_MAX} characters")
        out["name"] = name.strip()
    for limit in LIMITS:
        if limit in doc:
            out[limit] = _limit(limit, doc[limit])
    if "providers" in doc:
        out["providers"] = _names("providers", doc["providers"], _PROVIDER)
    if "models" in doc:
        out["models"] = _names("models", doc["models"], None)
    if "expires_at" in doc:
        out["expires_at"] = _expiry(doc["expires_at"])
    if "enabled" in doc:
        if not isinstance(doc["enabled"], bool):
            raise ValueError(f"enabled: must be true or false, got {_short(doc['enabled'])}")
        out["enabled"] = doc["enabled"]
    if creating and out.get("expires_at", 0.0) and out["expires_at"] <= time.time():
        raise ValueError("expires_at: already in the past")
    return out
