"""A provider's effective settings (`ProviderConfig`) and the checks on each of its fields.

`TUNABLE` names the fields a config file or the admin API may set, `BOUNDS` their ranges, and
`coerce_field` checks one value the same way for the config file, the environment, the store
and the admin API. `split_keys` and `key_sources` read and group a provider's keys.
Reading the YAML file and the environment into `Settings` is `keygate.config.settings`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any

from keygate.config.error_rules import ErrorRules, parse_rules
from keygate.config.quotaday import DEFAULT_DAY_RESET, parse_day_reset
from keygate.config.urls import check_upstream, mask_url


@dataclass(slots=True)
class ProviderConfig:
    """A provider's effective settings. Mutable: the admin API changes them at run time."""

    name: str
    base_url: str
    key_style: str = "bearer"
    rps: float = 5.0
    burst: int = 10
    max_conn: int = 5
    queue: int = 200
    queue_timeout_s: float = 30.0
    retries: int = 2
    backoff_base_s: float = 0.5
    retry_after_max_s: float = 30.0
    cooldown_s: float = 30.0
    exhausted_cooldown_s: float = 3600.0
    recheck_interval_s: float = 300.0
    key_rpm: int = 0
    key_rph: int = 0
    key_rpd: int = 0
    key_tpm: int = 0
    key_tph: int = 0
    key_tpd: int = 0
    key_max_conn: int = 0
    quota_day_reset: str = DEFAULT_DAY_RESET  # when rpd/tpd windows start again
    default_max_tokens: int = 1024  # a request's completion estimate when it sets no max_tokens
    timeout_connect_s: float = 10.0
    timeout_first_byte_s: float = 120.0
    timeout_idle_s: float = 60.0
    max_body_mb: float = 32.0
    default_model: str = ""
    force_model: bool = False
    # a model the provider does not list (upstream list, `models:`) gets 404 before anything is sent
    strict_models: bool = False
    # SPEC §15: a conversation goes back to the key that served it last (its prompt cache)
    affinity: str = "prefix"  # prefix | header (explicit ids only) | off
    affinity_ttl_s: float = 600.0  # how long a pin outlives its last use
    # SPEC §15: what an upstream error means for the key, checked before the built-in judgement
    error_rules: ErrorRules = field(default_factory=ErrorRules)
    # SPEC §19: exact answers kept and served again; None: off (nothing computed per request)
    cache: CacheSettings | None = None
    cache_scope: str = "key"  # key: each client key its own entries | shared: one for all
    # SPEC §16: egress proxies (checked URLs, or [direct]); empty: KEYGATE_PROXY, else direct
    proxies: list[str] = field(default_factory=list)
    proxy_cooldown_s: float = 30.0  # how long a failing proxy rests
    key_proxies: dict[str, str] = field(default_factory=dict)  # `secret|proxy=URL`: by secret
    keys: list[str] = field(default_factory=list)
    config_keys: list[str] = field(default_factory=list)  # those of `keys` the file lists
    # `secret|tier=1|weight=3` in the file or the environment: the options of those keys
    key_options: dict[str, dict[str, int]] = field(default_factory=dict)
    models: list[str] = field(default_factory=list)  # listed in /v1/models beside the upstream's
    builtin: bool = True

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

    def public(self) -> dict[str, Any]:
        """Settings safe to show (no keys)."""
        d = dataclasses.asdict(self)
        d.pop("keys")
        d.pop("config_keys")
        d.pop("key_options")
        d.pop("key_proxies")  # keyed by secret
        d["proxies"] = [mask_url(u) for u in self.proxies]  # a proxy's password is never shown
        return d


# Fields a config file or the admin API may set, with their types. `keys` and `key_style` are
# handled separately because they are not plain numbers.
TUNABLE: dict[str, type] = {
    "base_url": str,
    "rps": float,
    "burst": int,
    "max_conn": int,
    "queue": int,
    "queue_timeout_s": float,
    "retries": int,
    "backoff_base_s": float,
    "retry_after_max_s": float,
    "cooldown_s": float,
    "exhausted_cooldown_s": float,
    "recheck_interval_s": float,
    "key_rpm": int,
    "key_rph": int,
    "key_rpd": int,
    "key_tpm": int,
    "key_tph": int,
    "key_tpd": int,
    "key_max_conn": int,
    "quota_day_reset": str,
    "default_max_tokens": int,
    "timeout_connect_s": float,
    "timeout_first_byte_s": float,
    "timeout_idle_s": float,
    "max_body_mb": float,
    "default_model": str,
    "force_model": bool,
    "strict_models": bool,
    "error_rules": list,
    "affinity": str,
    "affinity_ttl_s": float,
    "proxy_cooldown_s": float,
    "cache": dict,
    "cache_scope": str,
}
_POSITIVE = {
    "timeout_connect_s",
    "timeout_first_byte_s",
    "timeout_idle_s",
    "max_body_mb",
    "affinity_ttl_s",
}
AFFINITY_MODES = ("prefix", "header", "off")
CACHE_SCOPES = ("key", "shared")
CACHE_TTL_MAX_S = 30 * 86_400
CACHE_MB_MAX = 65_536


class CacheSettings(dict[str, float]):
    """A provider's `cache: {ttl_s, max_mb}`: a dict (shown and stored as it is) whose two
    values the request path reads as attributes."""

    __slots__ = ("max_bytes", "ttl_s")

    def __init__(self, *args: Any, **kw: float) -> None:
        # built from the checked values, or by `dataclasses.asdict` from its items
        super().__init__(*args, **kw)
        self.setdefault("ttl_s", 3600.0)
        self.setdefault("max_mb", 64.0)
        self.ttl_s = self["ttl_s"]
        self.max_bytes = int(self["max_mb"] * 1024 * 1024)


def parse_cache(value: Any) -> CacheSettings | None:
    """`cache:` as written: a mapping of `ttl_s` and `max_mb` (either may be left out), or
    null / false for off (an empty mapping is on, with the defaults)."""
    if value is None or value is False:
        return None
    if value is True:
        return CacheSettings()
    if not isinstance(value, dict):
        raise ValueError(f"must be a mapping of ttl_s and max_mb, or null, got {short_repr(value)}")
    unknown = sorted(map(str, set(value) - {"ttl_s", "max_mb"}))
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(unknown)} (ttl_s, max_mb)")
    out = {}
    for name, default, high in (("ttl_s", 3600.0, CACHE_TTL_MAX_S), ("max_mb", 64.0, CACHE_MB_MAX)):
        v = value.get(name, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f".{name}: must be a number, got {short_repr(v)}")
        if not math.isfinite(v) or not 0 < v <= high:
            raise ValueError(f".{name}: must be > 0 and ≤ {high:g}, got {short_repr(v)}")
        out[name] = float(v)
    return CacheSettings(out)


# Upper bound of every numeric field (lower bound 0; > 0 for _POSITIVE). Far above any real
# setting, low enough that arithmetic on them (bytes, seconds, leases) stays finite and the
# store's 64-bit integers hold them (docs/configuration.md, "Provider settings").
BOUNDS: dict[str, float] = {
    "rps": 100_000,
    "burst": 1_000_000,
    "max_conn": 100_000,
    "queue": 1_000_000,
    "queue_timeout_s": 3600,
    "retries": 10,
    "backoff_base_s": 60,
    "retry_after_max_s": 3600,
    "cooldown_s": 86_400,
    "exhausted_cooldown_s": 30 * 86_400,
    "recheck_interval_s": 30 * 86_400,
    "key_rpm": 1_000_000,
    "key_rph": 100_000_000,
    "key_rpd": 1_000_000_000,
    "key_tpm": 1_000_000_000,
    "key_tph": 100_000_000_000,
    "key_tpd": 1_000_000_000_000,
    "key_max_conn": 100_000,
    "default_max_tokens": 10_000_000,
    "timeout_connect_s": 600,
    "timeout_first_byte_s": 3600,
    "timeout_idle_s": 3600,
    "max_body_mb": 1024,
    "affinity_ttl_s": 30 * 86_400,
    "proxy_cooldown_s": 86_400,
}
MODEL_NAME_MAX = 200


def coerce_field(key: str, value: Any, allow_private: bool = False) -> Any:
    """Validate one tunable value; raises ValueError with the problem (without the key name).
    `allow_private` lets `base_url` reach link-local and metadata addresses."""
    kind = TUNABLE.get(key)
    if kind is None:
        raise ValueError("unknown field")
    if kind is list:
        return parse_rules(value)
    if kind is dict:
        return parse_cache(value)
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ValueError(f"must be true or false, got {value!r}")
    if kind is str:
        if key == "affinity" and value is False:
            value = "off"  # YAML reads a bare `off` as false
        if not isinstance(value, str):
            raise ValueError(f"must be a string, got {value!r}")
        if key == "base_url":
            return check_upstream(value, allow_private)
        if key == "cache_scope":
            if value not in CACHE_SCOPES:
                raise ValueError(
                    f"must be one of {', '.join(CACHE_SCOPES)}, got {short_repr(value)}"
                )
            return value
        if key == "affinity":
            if value not in AFFINITY_MODES:
                raise ValueError(
                    f"must be one of {', '.join(AFFINITY_MODES)}, got {short_repr(value)}"
                )
            return value
        if key == "quota_day_reset":
            hour, minute, zone = parse_day_reset(value)
            return f"{hour:02d}:{minute:02d} {zone}"
        if len(value) > MODEL_NAME_MAX or re.search(r"[\x00-\x1f\x7f]", value):
            raise ValueError(f"must be at most {MODEL_NAME_MAX} characters, no control characters")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"must be a number, got {value!r}")
    if kind is int and isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON's 5.0 is the integer 5 (as JSON Schema says)
    try:
        number = float(value) if kind is float else int(str(value), 10)
    except ValueError:
        raise ValueError(
            f"must be {'a number' if kind is float else 'a whole number'}, got {value!r}"
        ) from None
    high = BOUNDS[key]
    low = "> 0" if key in _POSITIVE else "≥ 0"
    if not math.isfinite(number) or not 0 <= number <= high or (key in _POSITIVE and number == 0):
        raise ValueError(f"must be {low} and ≤ {high:g}, got {short_repr(value)}")
    return number


def field_problem(key: str, exc: ValueError) -> str:
    """`key: problem`, or `key[2].match: problem` when the problem is in one item of a list."""
    text = str(exc)
    return f"{key}{text}" if text.startswith(("[", ".")) else f"{key}: {text}"


def short_repr(value: Any) -> str:
    """`repr(value)` cut to 40 characters, for an error message."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def key_sources(cfg: ProviderConfig, keys: list[str]) -> list[tuple[str, list[str]]]:
    """`keys` grouped by where they came from, as the store labels them: the config file
    ("config") or a `<NAME>_API_KEYS` variable ("env"); empty groups left out."""
    listed = set(cfg.config_keys)
    groups = (
        ("config", [k for k in keys if k in listed]),
        ("env", [k for k in keys if k not in listed]),
    )
    return [(source, group) for source, group in groups if group]


def split_keys(text: str) -> list[str]:
    """Keys separated by commas, newlines or whitespace; blanks and repeats dropped, order kept."""
    seen: dict[str, None] = {}
    for token in re.split(r"[\s,]+", text):
        token = token.strip().strip("\"'")
        if token:
            seen.setdefault(token, None)
    return list(seen)
