"""The named types of the admin API's answers (components/schemas of the OpenAPI document).

Bodies a handler checks itself are declared beside it with the fields of admin/schema.py; the
types here are what the handlers answer, plus the provider settings, whose checks live in
settings.py (`TUNABLE`, `BOUNDS`: the document carries the same bounds).
"""

from __future__ import annotations

from typing import Any

from keygate.admin.schema import (
    BOOL,
    INT,
    NO_CONTROL,
    NUM,
    STR,
    TIME,
    Component,
    Schema,
    arr,
    ints,
    nullable,
    obj,
    said,
)
from keygate.config.error_rules import ACTIONS, COOL_MAX_S, MATCH_MAX, RULES_MAX
from keygate.config.provider_config import CACHE_MB_MAX, CACHE_TTL_MAX_S
from keygate.config.routing import TARGETS_MAX
from keygate.config.settings import BOUNDS, MODEL_NAME_MAX, TUNABLE
from keygate.control.quota import WINDOWS
from keygate.dialects import KEY_STYLES
from keygate.store.base import KEY_STATUSES

KEY_STATUS: Schema = {"type": "string", "enum": list(KEY_STATUSES)}
COUNTERS = ints("requests", "ok", "err_4xx", "err_5xx", "tokens_in", "tokens_out")
KEY_COUNTS = obj(ints(*KEY_STATUSES, "total"))
DELETED_ID = obj({"deleted": INT})

ERROR = Component(
    "Error",
    obj(
        {
            "error": obj(
                {
                    "message": STR,
                    "type": STR,
                    "code": STR,
                    "param": said(nullable(STR), "the offending field"),
                },
                required=["message", "type", "code"],
            )
        },
        required=["error"],
    ),
)
OK = Component("Ok", obj({"ok": {"type": "boolean", "const": True}}))

_QUOTA_WINDOW = obj({"used": nullable(INT), "limit": nullable(INT), "reset_at": TIME})
KEY = Component(
    "Key",
    obj(
        {
            "id": INT,
            "provider": STR,
            "masked": said(STR, "first 4 and last 4 characters"),
            "label": STR,
            "status": KEY_STATUS,
            "use_count": INT,
            "last_used": TIME,
            "created_at": NUM,
            "last_error": nullable(STR),
            "cooldown_until": TIME,
            "source": {"type": "string", "enum": ["env", "config", "api", "cli"]},
            "inflight": INT,
            **ints("ok", "err_4xx", "err_5xx", "tokens_in", "tokens_out"),
            **{w: said(INT, f"0 = the provider's key_{w}") for w in (*WINDOWS, "max_conn")},
            "tier": said(INT, "lower tiers are spent first; a higher one takes the overflow"),
            "weight": said(INT, "the key's share of the picks inside its tier"),
            "proxy": said(
                STR, "the egress proxy the key goes through (password masked), or direct"
            ),
            "quota": obj(
                {w: _QUOTA_WINDOW for w in WINDOWS},
                description="each quota window: used, limit (configured or announced by the"
                " upstream, the lower; null where unknown) and when it resets",
            ),
        },
        description="A stored key; the secret is never returned, only its masked form.",
    ),
)
TEST_RESULT = Component(
    "TestResult",
    obj(
        {
            "id": INT,
            "ok": BOOL,
            "status": said(INT, "upstream status; 0 when unreachable"),
            "latency_ms": NUM,
            "error": nullable(STR),
            "key": KEY,
        }
    ),
)
IMPORT_RESULT = Component(
    "ImportResult",
    obj(
        {
            "input": said(STR, "the token, masked"),
            "status": {"type": "string", "enum": ["added", "duplicate", "invalid"]},
            "id": nullable(INT),
            "message": STR,
        }
    ),
)

# --- providers: the settings the admin API may change (settings.TUNABLE, within BOUNDS) -------
_JSON_TYPES = {
    int: "integer",
    float: "number",
    str: "string",
    bool: "boolean",
    list: "array",
    dict: "object",
}
_POSITIVE = (
    "timeout_connect_s",
    "timeout_first_byte_s",
    "timeout_idle_s",
    "max_body_mb",
    "affinity_ttl_s",
)
_PER_WINDOW = {
    "rpm": "requests/minute",
    "rph": "requests/hour",
    "rpd": "requests/day",
    "tpm": "tokens/minute",
    "tph": "tokens/hour",
    "tpd": "tokens/day",
}
_TUNABLE_SAYS: dict[str, Schema] = {
    "base_url": {"format": "uri"},
    "rps": {"description": "tokens per second; 0 = no limit"},
    "max_conn": {"description": "0 = no limit"},
    **{f"key_{w}": {"description": f"per-key {per}"} for w, per in _PER_WINDOW.items()},
    "quota_day_reset": {
        "description": 'when the rpd/tpd windows start again, "HH:MM <IANA zone>"',
        "pattern": r"^\s*([01]?\d|2[0-3]):[0-5]\d(\s+\S+)?\s*$",
    },
    "default_max_tokens": {
        "description": "completion tokens estimated for a request that sets no max_tokens"
    },
    "default_model": {"maxLength": MODEL_NAME_MAX, "pattern": NO_CONTROL},
    "affinity": {
        "enum": ["prefix", "header", "off"],
        "description": "send a conversation back to the key that served it last",
    },
    "affinity_ttl_s": {"description": "seconds a pin outlives its last use"},
    "proxy_cooldown_s": {"description": "seconds a failing egress proxy rests"},
    "cache": {
        "type": ["object", "null"],
        "properties": {
            "ttl_s": {"type": "number", "exclusiveMinimum": 0, "maximum": CACHE_TTL_MAX_S},
            "max_mb": {"type": "number", "exclusiveMinimum": 0, "maximum": CACHE_MB_MAX},
        },
        "additionalProperties": False,
        "description": "the exact response cache (SPEC §19); null: off",
    },
    "cache_scope": {
        "enum": ["key", "shared"],
        "description": "key: each client key has its own cached answers; shared: one for all",
    },
}


_STATUS: Schema = {"type": "integer", "minimum": 100, "maximum": 599}
_ERROR_RULE = obj(
    {
        "status": {"oneOf": [_STATUS, arr(_STATUS, minItems=1)]},
        "match": said(
            {"type": "string", "minLength": 1, "maxLength": MATCH_MAX},
            "a regular expression searched in the error body",
        ),
        "action": {"type": "string", "enum": list(ACTIONS)},
        "cool_s": said(
            {"type": "number", "exclusiveMinimum": 0, "maximum": COOL_MAX_S},
            "seconds; for (and only for) action cool",
        ),
    },
    required=["status", "action"],
    closed=True,
)
_TUNABLE_SAYS["error_rules"] = {
    "items": _ERROR_RULE,
    "description": "what an upstream error means for the key, checked in order before the"
    f" built-in judgement; the first match decides (at most {RULES_MAX}; [] for none)",
}


def _tunable(name: str, kind: type) -> Schema:
    schema: Schema = {"type": _JSON_TYPES[kind]}
    if name in BOUNDS:  # the same bounds the server enforces (settings.coerce_field)
        low = "exclusiveMinimum" if name in _POSITIVE else "minimum"
        schema.update({low: 0, "maximum": BOUNDS[name]})
    return {**schema, **_TUNABLE_SAYS.get(name, {})}


TUNABLE_PROPS = {name: _tunable(name, kind) for name, kind in TUNABLE.items()}
_PROVIDER_QUOTA = obj(
    description="per quota window, over the keys with a limit in it: used and limit summed,"
    " the earliest reset",
    additionalProperties=obj({"used": INT, "limit": INT, "reset_at": TIME, "keys": INT}),
)
PROVIDER = Component(
    "Provider",
    obj(
        {
            "name": STR,
            "key_style": {"type": "string", "enum": list(KEY_STYLES)},
            **TUNABLE_PROPS,
            "builtin": BOOL,
            "keys": KEY_COUNTS,
            **ints("in_flight", "queued"),
            "paused_for_s": NUM,
            "quota": _PROVIDER_QUOTA,
            "proxies": arr(
                obj(
                    {
                        "url": said(STR, "password masked"),
                        "status": {"type": "string", "enum": ["active", "cooling"]},
                        "errors": INT,
                        "cooldown_until": NUM,
                    }
                ),
                description="the egress proxies' health (SPEC §16); [] when direct",
            ),
        }
    ),
)
PROVIDER_PATCH = Component(
    "ProviderPatch",
    obj(
        TUNABLE_PROPS,
        closed=True,
        description="Any tunable field; applies at once to the running gateway.",
    ),
)
CONFIG = Component(
    "Config",
    obj(
        {
            "version": STR,
            "default_provider": STR,
            "admin_path": STR,
            "proxy_auth": BOOL,
            "store": STR,
            "shared_state": {"type": "string", "enum": ["local", "redis", "local-fallback"]},
            "flush_interval_ms": INT,
            "providers": obj(additionalProperties=obj({"default_model": STR, "force_model": BOOL})),
        }
    ),
)
DEFAULT_MODEL = Component(
    "DefaultModel", obj({"provider": STR, "default_model": STR, "force_model": BOOL})
)

# --- traffic ----------------------------------------------------------------------------------
_USAGE = obj(ints("requests", "tokens_in", "tokens_out", "errors"))
CLIENT_USAGE = Component(
    "ClientUsage",
    obj(
        {
            "name": STR,
            "status": STR,
            "today": _USAGE,
            "month": _USAGE,
            "all": _USAGE,
            "last_used": nullable(NUM),
        }
    ),
)
PROVIDER_STATS = Component(
    "ProviderStats",
    obj(
        {
            **COUNTERS,
            "keys": KEY_COUNTS,
            **ints("in_flight", "max_conn", "queued", "queue"),
            "quota": _PROVIDER_QUOTA,
            "affinity": obj(
                ints("hit", "new", "moved"),
                description="answers by what their pick made of the conversation's pin",
            ),
            "timeline": arr(
                obj(
                    {
                        **ints("t", "rps", "errors"),
                        "p50": nullable(NUM),
                        "p95": nullable(NUM),
                    }
                ),
                description="one point per second, the last 120 s",
            ),
        }
    ),
)
_CACHE_COUNTS = ints("hits", "misses", "bypasses", "entries", "bytes", "tokens_saved")
STATS = Component(
    "Stats",
    obj(
        {
            "uptime_s": NUM,
            "since": NUM,
            "totals": obj(
                {**COUNTERS, "keys": KEY_COUNTS, **ints("in_flight", "queued")},
                description="all-time: store totals plus what is not flushed yet",
            ),
            "providers": obj(
                description="providers with keys or traffic", additionalProperties=PROVIDER_STATS
            ),
            "clients": obj(
                description="usage per client key, by client id", additionalProperties=CLIENT_USAGE
            ),
            "cache": obj(
                {
                    **_CACHE_COUNTS,
                    "providers": obj(
                        description="per provider with a cache",
                        additionalProperties=obj(_CACHE_COUNTS),
                    ),
                },
                description="the response cache (SPEC §19) since start; entries and bytes held",
            ),
        }
    ),
)
REQUEST_RECORD = Component(
    "RequestRecord",
    obj(
        {
            "ts": NUM,
            "provider": STR,
            "method": STR,
            "path": STR,
            "model": STR,
            "key_id": nullable(INT),
            "key": said(STR, "masked"),
            "status": INT,
            "latency_ms": NUM,
            "retries": INT,
            "error": STR,
            "translated": said(
                STR,
                "client→provider API family when the request was translated "
                "(e.g. anthropic→openai); empty when it passed as it is",
            ),
            "route": said(
                STR,
                "a routed request's targets as tried, e.g. "
                "'groq/m (429) → cerebras/m'; empty for a prefix route",
            ),
            "client_name": said(STR, "the client key's name; empty for the gateway password"),
        }
    ),
)

# --- models and clients -----------------------------------------------------------------------
MODEL_ROUTE = Component(
    "ModelRoute",
    obj(
        {
            "name": STR,
            "strategy": {"type": "string", "enum": ["alias", "fallback", "spread"]},
            "targets": arr(
                STR, maxItems=TARGETS_MAX, description="provider/model, nested names resolved"
            ),
            "spec": {"description": "the entry as written (a target, or strategy and targets)"},
            "source": {"type": "string", "enum": ["config", "admin"]},
        }
    ),
)
_USAGE_WINDOWS: dict[str, Any] = {"today": _USAGE, "month": _USAGE, "all": _USAGE}
CLIENT = Component(
    "Client",
    obj(
        {
            "id": INT,
            "name": STR,
            "masked": STR,
            "status": {"type": "string", "enum": ["active", "disabled", "expired"]},
            "enabled": BOOL,
            **{k: nullable(INT) for k in ("rpm", "rpd", "tpd", "monthly_tokens")},
            "providers": arr(STR),
            "models": arr(STR),
            "expires_at": nullable(NUM),
            "created_at": NUM,
            "last_used": nullable(NUM),
            "usage": obj(_USAGE_WINDOWS),
            "timeline": arr(
                INT, description="requests per minute over the last hour (this instance)"
            ),
        },
        description="a client key (the key itself only in the answer to its creation)",
    ),
)
