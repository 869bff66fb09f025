"""The OpenAPI 3.1 document of the admin API (served at GET /api/openapi.json).

Kept as plain data beside the handlers so a route added to api.py without a line here is
caught by the tests, which walk this document's paths.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

from keygate import __version__
from keygate.admin import openapi_clients
from keygate.control.quota import WINDOWS
from keygate.dialects import KEY_STYLES
from keygate.routing import TARGETS_MAX
from keygate.settings import BOUNDS, MODEL_NAME_MAX
from keygate.store.base import MAX_SECRET_LEN, MIN_SECRET_LEN


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


def _body(schema: dict[str, Any], required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


def _path_param(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": schema,
        "description": description,
    }


def _op(
    summary: str,
    ok: dict[str, Any],
    *,
    status: str = "200",
    body: dict[str, Any] | None = None,
    params: list[dict[str, Any]] | None = None,
    errors: tuple[str, ...] = (),
    public: bool = False,
    tag: str,
) -> dict[str, Any]:
    responses: dict[str, Any] = {status: ok}
    messages = {
        "400": "validation error; the message names the field",
        "403": "cookie auth without the x-keygate-csrf header on a write",
        "404": "no such object",
        "409": "the provider already has this key (keys); another entry names it (models)",
        "413": "body too large",
    }
    for code in errors:
        responses[code] = _error(messages[code])
    responses["401"] = _error("no or wrong admin credentials")
    responses["429"] = _error("too many wrong admin passwords lately; see Retry-After")
    op: dict[str, Any] = {"summary": summary, "tags": [tag], "responses": responses}
    if body is not None:
        op["requestBody"] = body
    if params:
        op["parameters"] = params
    if public:
        op["security"] = []
    return op


_NULLABLE_TIME = {"type": ["number", "null"], "description": "epoch seconds"}
_KEY_STATUS = {"type": "string", "enum": ["active", "cooling", "invalid", "exhausted", "disabled"]}
_KEY_ID = _path_param("id", {"type": "integer", "minimum": 1}, "key id")
_PROVIDER_NAME = _path_param("name", {"type": "string"}, "provider name")
_KEY_COUNTS = {
    "type": "object",
    "properties": {
        s: {"type": "integer"}
        for s in ("active", "cooling", "invalid", "exhausted", "disabled", "total")
    },
}
# Filled in with the running gateway's provider names when the document is served.
_PROVIDER_FIELD: dict[str, Any] = {"type": "string", "minLength": 1}
# What the store accepts as a key (store.base.check_secret): printable, no whitespace.
_SECRET = {
    "type": "string",
    "writeOnly": True,
    "minLength": MIN_SECRET_LEN,
    "maxLength": MAX_SECRET_LEN,
    "pattern": "^[!-~]+$",
}
_COUNTERS = {
    n: {"type": "integer"}
    for n in ("requests", "ok", "err_4xx", "err_5xx", "tokens_in", "tokens_out")
}
_QUOTA_WINDOW: dict[str, Any] = {
    "type": "object",
    "properties": {
        "used": {"type": ["integer", "null"]},
        "limit": {"type": ["integer", "null"]},
        "reset_at": _NULLABLE_TIME,
    },
}
_PROVIDER_QUOTA: dict[str, Any] = {
    "type": "object",
    "description": "per quota window, over the keys with a limit in it: used and limit summed,"
    " the earliest reset",
    "additionalProperties": {
        "type": "object",
        "properties": {
            "used": {"type": "integer"},
            "limit": {"type": "integer"},
            "reset_at": _NULLABLE_TIME,
            "keys": {"type": "integer"},
        },
    },
}
_TUNABLE_PROPS: dict[str, Any] = {
    "base_url": {"type": "string", "format": "uri"},
    "rps": {"type": "number", "minimum": 0, "description": "tokens per second; 0 = no limit"},
    "burst": {"type": "integer", "minimum": 0},
    "max_conn": {"type": "integer", "minimum": 0, "description": "0 = no limit"},
    "queue": {"type": "integer", "minimum": 0},
    "queue_timeout_s": {"type": "number", "minimum": 0},
    "retries": {"type": "integer", "minimum": 0},
    "backoff_base_s": {"type": "number", "minimum": 0},
    "retry_after_max_s": {"type": "number", "minimum": 0},
    "cooldown_s": {"type": "number", "minimum": 0},
    "exhausted_cooldown_s": {"type": "number", "minimum": 0},
    "recheck_interval_s": {"type": "number", "minimum": 0},
    "key_rpm": {"type": "integer", "minimum": 0, "description": "per-key requests/minute"},
    "key_rph": {"type": "integer", "minimum": 0, "description": "per-key requests/hour"},
    "key_rpd": {"type": "integer", "minimum": 0, "description": "per-key requests/day"},
    "key_tpm": {"type": "integer", "minimum": 0, "description": "per-key tokens/minute"},
    "key_tph": {"type": "integer", "minimum": 0, "description": "per-key tokens/hour"},
    "key_tpd": {"type": "integer", "minimum": 0, "description": "per-key tokens/day"},
    "key_max_conn": {"type": "integer", "minimum": 0},
    "quota_day_reset": {
        "type": "string",
        "description": 'when the rpd/tpd windows start again, "HH:MM <IANA zone>"',
        "pattern": r"^\s*([01]?\d|2[0-3]):[0-5]\d(\s+\S+)?\s*$",
    },
    "default_max_tokens": {
        "type": "integer",
        "minimum": 0,
        "description": "completion tokens estimated for a request that sets no max_tokens",
    },
    "timeout_connect_s": {"type": "number", "exclusiveMinimum": 0},
    "timeout_first_byte_s": {"type": "number", "exclusiveMinimum": 0},
    "timeout_idle_s": {"type": "number", "exclusiveMinimum": 0},
    "max_body_mb": {"type": "number", "exclusiveMinimum": 0},
    "default_model": {
        "type": "string",
        "maxLength": MODEL_NAME_MAX,
        "pattern": r"^[^\x00-\x1f\x7f]*$",
    },
    "force_model": {"type": "boolean"},
}
for _name, _high in BOUNDS.items():  # the same bounds the server enforces
    _TUNABLE_PROPS[_name]["maximum"] = _high

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type", "code"],
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "code": {"type": "string"},
                    "param": {"type": ["string", "null"], "description": "the offending field"},
                },
            }
        },
    },
    "Key": {
        "type": "object",
        "description": "A stored key; the secret is never returned, only its masked form.",
        "properties": {
            "id": {"type": "integer"},
            "provider": {"type": "string"},
            "masked": {"type": "string", "description": "first 4 and last 4 characters"},
            "label": {"type": "string"},
            "status": _KEY_STATUS,
            "use_count": {"type": "integer"},
            "last_used": _NULLABLE_TIME,
            "created_at": {"type": "number"},
            "last_error": {"type": ["string", "null"]},
            "cooldown_until": _NULLABLE_TIME,
            "source": {"type": "string", "enum": ["env", "config", "api", "cli"]},
            "inflight": {"type": "integer"},
            "ok": {"type": "integer"},
            "err_4xx": {"type": "integer"},
            "err_5xx": {"type": "integer"},
            "tokens_in": {"type": "integer"},
            "tokens_out": {"type": "integer"},
            "rpm": {"type": "integer", "description": "0 = the provider's key_rpm"},
            "rph": {"type": "integer", "description": "0 = the provider's key_rph"},
            "rpd": {"type": "integer", "description": "0 = the provider's key_rpd"},
            "tpm": {"type": "integer", "description": "0 = the provider's key_tpm"},
            "tph": {"type": "integer", "description": "0 = the provider's key_tph"},
            "tpd": {"type": "integer", "description": "0 = the provider's key_tpd"},
            "max_conn": {"type": "integer", "description": "0 = the provider's key_max_conn"},
            "quota": {
                "type": "object",
                "description": "each quota window: used, limit (configured or announced by the"
                " upstream, the lower; null where unknown) and when it resets",
                "properties": {w: _QUOTA_WINDOW for w in WINDOWS},
            },
        },
    },
    "Provider": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "key_style": {"type": "string", "enum": list(KEY_STYLES)},
            **_TUNABLE_PROPS,
            "builtin": {"type": "boolean"},
            "keys": _KEY_COUNTS,
            "in_flight": {"type": "integer"},
            "queued": {"type": "integer"},
            "paused_for_s": {"type": "number"},
            "quota": _PROVIDER_QUOTA,
        },
    },
    "ProviderPatch": {
        "type": "object",
        "description": "Any tunable field; applies at once to the running gateway.",
        "properties": _TUNABLE_PROPS,
        "additionalProperties": False,
    },
    "TestResult": {
        "type": "object",
        "properties": {
            "id": {"type": "integer"},
            "ok": {"type": "boolean"},
            "status": {"type": "integer", "description": "upstream status; 0 when unreachable"},
            "latency_ms": {"type": "number"},
            "error": {"type": ["string", "null"]},
            "key": _ref("Key"),
        },
    },
    "ImportResult": {
        "type": "object",
        "properties": {
            "input": {"type": "string", "description": "the token, masked"},
            "status": {"type": "string", "enum": ["added", "duplicate", "invalid"]},
            "id": {"type": ["integer", "null"]},
            "message": {"type": "string"},
        },
    },
    "ProviderStats": {
        "type": "object",
        "properties": {
            **_COUNTERS,
            "keys": _KEY_COUNTS,
            "in_flight": {"type": "integer"},
            "max_conn": {"type": "integer"},
            "queued": {"type": "integer"},
            "queue": {"type": "integer"},
            "quota": _PROVIDER_QUOTA,
            "timeline": {
                "type": "array",
                "description": "one point per second, the last 120 s",
                "items": {
                    "type": "object",
                    "properties": {
                        "t": {"type": "integer"},
                        "rps": {"type": "integer"},
                        "errors": {"type": "integer"},
                        "p50": {"type": ["number", "null"]},
                        "p95": {"type": ["number", "null"]},
                    },
                },
            },
        },
    },
    "Stats": {
        "type": "object",
        "properties": {
            "uptime_s": {"type": "number"},
            "since": {"type": "number"},
            "totals": {
                "type": "object",
                "description": "all-time: store totals plus what is not flushed yet",
                "properties": {
                    **_COUNTERS,
                    "keys": _KEY_COUNTS,
                    "in_flight": {"type": "integer"},
                    "queued": {"type": "integer"},
                },
            },
            "providers": {
                "type": "object",
                "description": "providers with keys or traffic",
                "additionalProperties": _ref("ProviderStats"),
            },
        },
    },
    "Config": {
        "type": "object",
        "properties": {
            "version": {"type": "string"},
            "default_provider": {"type": "string"},
            "admin_path": {"type": "string"},
            "proxy_auth": {"type": "boolean"},
            "store": {"type": "string"},
            "shared_state": {"type": "string", "enum": ["local", "redis", "local-fallback"]},
            "flush_interval_ms": {"type": "integer"},
            "providers": {
                "type": "object",
                "additionalProperties": {
                    "type": "object",
                    "properties": {
                        "default_model": {"type": "string"},
                        "force_model": {"type": "boolean"},
                    },
                },
            },
        },
    },
    "DefaultModel": {
        "type": "object",
        "properties": {
            "provider": {"type": "string"},
            "default_model": {"type": "string"},
            "force_model": {"type": "boolean"},
        },
    },
    "RequestRecord": {
        "type": "object",
        "properties": {
            "ts": {"type": "number"},
            "provider": {"type": "string"},
            "method": {"type": "string"},
            "path": {"type": "string"},
            "model": {"type": "string"},
            "key_id": {"type": ["integer", "null"]},
            "key": {"type": "string", "description": "masked"},
            "status": {"type": "integer"},
            "latency_ms": {"type": "number"},
            "retries": {"type": "integer"},
            "error": {"type": "string"},
            "translated": {
                "type": "string",
                "description": "client→provider API family when the request was translated "
                "(e.g. anthropic→openai); empty when it passed as it is",
            },
            "route": {
                "type": "string",
                "description": "a routed request's targets as tried, e.g. "
                "'groq/m (429) → cerebras/m'; empty for a prefix route",
            },
        },
    },
    "ModelRoute": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "strategy": {"type": "string", "enum": ["alias", "fallback", "spread"]},
            "targets": {
                "type": "array",
                "maxItems": TARGETS_MAX,
                "items": {"type": "string"},
                "description": "provider/model, nested names resolved",
            },
            "spec": {"description": "the entry as written (a target, or strategy and targets)"},
            "source": {"type": "string", "enum": ["config", "admin"]},
        },
    },
    "Ok": {"type": "object", "properties": {"ok": {"type": "boolean", "const": True}}},
}

_SESSION = "session"
_KEYS = "keys"
_PROVIDERS = "providers"
_STATUS = "status"
_MODELS = "models"
_MODEL_NAME = _path_param(
    "name", {"type": "string", "minLength": 1, "maxLength": 200}, "alias or group name"
)
_TARGET = {
    "type": "string",
    "minLength": 1,
    "maxLength": 200,
    "pattern": r"^[^\x00-\x1f\x7f]+$",
    "description": "provider/model, or the name of another alias or group",
}

PATHS: dict[str, Any] = {
    "/api/session": {
        "post": _op(
            "Log in with the admin password; sets the HttpOnly SameSite=Strict session cookie",
            _json(_ref("Ok"), "logged in; Set-Cookie: keygate_session"),
            body=_body(
                {
                    "type": "object",
                    "required": ["password"],
                    "properties": {"password": {"type": "string", "minLength": 1}},
                }
            ),
            errors=("400",),
            public=True,
            tag=_SESSION,
        ),
        "get": _op("Whether the caller is authenticated", _json(_ref("Ok"), "yes"), tag=_SESSION),
        "delete": _op(
            "Log out: revoke and clear the session cookie",
            _json(_ref("Ok"), "logged out"),
            errors=("403",),
            tag=_SESSION,
        ),
    },
    "/api/providers": {
        "get": _op(
            "Providers with their effective settings, key counts and live load",
            _json(
                {
                    "type": "object",
                    "properties": {"providers": {"type": "array", "items": _ref("Provider")}},
                },
                "providers",
            ),
            tag=_PROVIDERS,
        ),
    },
    "/api/providers/{name}": {
        "patch": _op(
            "Change tunable settings; applies at once to the running gateway and persists",
            _json(_ref("Provider"), "the provider after the change"),
            body=_body(_ref("ProviderPatch"), required=False),
            params=[_PROVIDER_NAME],
            errors=("400", "403", "404"),
            tag=_PROVIDERS,
        ),
    },
    "/api/providers/{name}/test": {
        "post": _op(
            "Test every non-disabled key of a provider (at most 200, 10 at a time)",
            _json(
                {
                    "type": "object",
                    "properties": {"results": {"type": "array", "items": _ref("TestResult")}},
                },
                "one result per key",
            ),
            params=[_PROVIDER_NAME],
            errors=("403", "404"),
            tag=_PROVIDERS,
        ),
    },
    "/api/keys": {
        "get": _op(
            "List keys, newest first, with filter, search and pagination",
            _json(
                {
                    "type": "object",
                    "properties": {
                        "keys": {"type": "array", "items": _ref("Key")},
                        "total": {"type": "integer", "description": "matches under the filters"},
                    },
                },
                "one page",
            ),
            params=[
                _query("provider", {"type": "string"}, "only this provider"),
                _query(
                    "status",
                    {**_KEY_STATUS, "enum": [*_KEY_STATUS["enum"], ""]},
                    "only keys in this state; empty: any",
                ),
                _query("q", {"type": "string"}, "matches the label or the masked form"),
                _query(
                    "limit",
                    {"type": "integer", "minimum": 0, "default": 50},
                    "page size; more than 500 is served as 500",
                ),
                _query(
                    "offset",
                    {"type": "integer", "minimum": 0, "maximum": 10_000_000, "default": 0},
                    "skip this many",
                ),
            ],
            errors=("400",),
            tag=_KEYS,
        ),
        "post": _op(
            "Add one key; usable by the very next proxied request",
            _json(
                {"type": "object", "properties": {"id": {"type": "integer"}, "key": _ref("Key")}},
                "added",
            ),
            status="201",
            body=_body(
                {
                    "type": "object",
                    "required": ["provider", "key"],
                    "properties": {
                        "provider": _PROVIDER_FIELD,
                        "key": _SECRET,
                        "label": {"type": ["string", "null"], "maxLength": 200},
                    },
                }
            ),
            errors=("400", "403", "409"),
            tag=_KEYS,
        ),
    },
    "/api/keys/batch": {
        "post": _op(
            "Import many keys: text split on newlines, commas, whitespace, or a JSON array",
            _json(
                {
                    "type": "object",
                    "properties": {
                        "results": {"type": "array", "items": _ref("ImportResult")},
                        "added": {"type": "integer"},
                        "duplicate": {"type": "integer"},
                        "invalid": {"type": "integer"},
                    },
                },
                "one result per token, in input order",
            ),
            body=_body(
                {
                    "type": "object",
                    "required": ["provider", "input"],
                    "properties": {
                        "provider": _PROVIDER_FIELD,
                        "input": {
                            "oneOf": [
                                {"type": "string"},
                                {"type": "array", "items": {"type": "string"}},
                            ],
                            "writeOnly": True,
                        },
                    },
                }
            ),
            errors=("400", "403", "413"),
            tag=_KEYS,
        ),
    },
    "/api/keys/{id}": {
        "patch": _op(
            "Enable, disable, label or limit a key; applies at once",
            _json(_ref("Key"), "the key after the change"),
            body=_body(
                {
                    "description": "an empty body changes nothing and returns the key",
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "label": {"type": ["string", "null"], "maxLength": 200},
                        "status": {"type": "string", "enum": ["active", "disabled"]},
                        **{
                            w: {"type": "integer", "minimum": 0, "maximum": BOUNDS["key_" + w]}
                            for w in WINDOWS
                        },
                        "max_conn": {
                            "type": "integer",
                            "minimum": 0,
                            "maximum": BOUNDS["key_max_conn"],
                        },
                    },
                },
                required=False,
            ),
            params=[_KEY_ID],
            errors=("400", "403", "404"),
            tag=_KEYS,
        ),
        "delete": _op(
            "Delete a key; it is never used again from this moment",
            _json({"type": "object", "properties": {"deleted": {"type": "integer"}}}, "deleted"),
            params=[_KEY_ID],
            errors=("403", "404"),
            tag=_KEYS,
        ),
    },
    "/api/keys/{id}/test": {
        "post": _op(
            "Test a key against its upstream; a pass revives it, a 401/403 marks it invalid",
            _json(_ref("TestResult"), "the outcome"),
            params=[_KEY_ID],
            errors=("400", "403", "404"),
            tag=_KEYS,
        ),
    },
    "/api/stats": {
        "get": _op(
            "All-time counters, key states, load and a 120 s timeline",
            _json(_ref("Stats"), "stats"),
            tag=_STATUS,
        ),
    },
    "/api/config": {
        "get": _op(
            "The running configuration (no secrets)", _json(_ref("Config"), "config"), tag=_STATUS
        ),
    },
    "/api/config/default-model": {
        "put": _op(
            "Set a provider's default model (filled in when a request names none) and whether to force it",
            _json(_ref("DefaultModel"), "the provider's model settings now"),
            body=_body(
                {
                    "type": "object",
                    "required": ["model"],
                    "additionalProperties": False,
                    "properties": {
                        "model": {
                            "type": ["string", "null"],
                            "maxLength": 200,
                            "pattern": r"^[^\x00-\x1f\x7f]*$",
                            "description": "empty or null clears it",
                        },
                        "provider": {
                            "type": ["string", "null"],
                            "description": "empty or null: the default provider",
                        },
                        "force": {"type": "boolean"},
                    },
                }
            ),
            errors=("400", "403"),
            tag=_PROVIDERS,
        ),
    },
    "/api/requests": {
        "get": _op(
            "Recent requests, newest first (a bounded ring in memory)",
            _json(
                {
                    "type": "object",
                    "properties": {"requests": {"type": "array", "items": _ref("RequestRecord")}},
                },
                "records",
            ),
            params=[
                _query("provider", {"type": "string"}, "only this provider"),
                _query(
                    "status",
                    {
                        "type": "string",
                        "pattern": r"^\s*([0-9]{3}|[1-5][xX][xX]|[eE][rR][rR][oO][rR])?\s*$",
                    },
                    "a code (429), a class (2xx, 4xx, 5xx) or error (≥ 400)",
                ),
                _query(
                    "limit", {"type": "integer", "minimum": 0, "default": 100}, "at most this many"
                ),
            ],
            errors=("400",),
            tag=_STATUS,
        ),
    },
    "/api/models": {
        "get": _op(
            "The unified endpoint's aliases and groups, and each listed provider's models",
            _json(
                {
                    "type": "object",
                    "properties": {
                        "default_provider": {"type": "string"},
                        "routes": {"type": "object", "additionalProperties": _ref("ModelRoute")},
                        "hidden": {
                            "type": "array",
                            "items": {"type": "string"},
                            "description": "config entries removed at run time",
                        },
                        "providers": {
                            "type": "object",
                            "additionalProperties": {
                                "type": "object",
                                "properties": {
                                    "models": {"type": "array", "items": {"type": "string"}},
                                    "default": {"type": "boolean"},
                                    "fetched": {"type": "boolean"},
                                    "keys": {"type": "boolean"},
                                    "error": {"type": "string"},
                                },
                            },
                        },
                    },
                },
                "the model table",
            ),
            tag=_MODELS,
        ),
    },
    "/api/models/{name}": {
        "put": _op(
            "Set an alias (target) or a group (strategy, targets); applied at once on every "
            "instance. An unknown provider, empty targets, a cycle or more than "
            f"{TARGETS_MAX} targets (in the list, or once the aliases and groups it names are "
            "flattened) is a 400 naming the field. A request routed to a group has one retry "
            f"budget of at most {TARGETS_MAX - 1} ({TARGETS_MAX} tries)",
            _json(_ref("ModelRoute"), "the entry now"),
            body=_body(
                {
                    "oneOf": [
                        {
                            "type": "object",
                            "required": ["target"],
                            "additionalProperties": False,
                            "properties": {"target": _TARGET},
                        },
                        {
                            "type": "object",
                            "required": ["targets"],
                            "additionalProperties": False,
                            "properties": {
                                "strategy": {"type": "string", "enum": ["fallback", "spread"]},
                                "targets": {
                                    "type": "array",
                                    "minItems": 1,
                                    "maxItems": TARGETS_MAX,
                                    "items": _TARGET,
                                    "description": f"at most {TARGETS_MAX}, tried in order "
                                    "(fallback) or by free capacity (spread)",
                                },
                            },
                        },
                    ]
                }
            ),
            params=[_MODEL_NAME],
            errors=("400", "403"),
            tag=_MODELS,
        ),
        "delete": _op(
            "Remove an alias or group (one from the config file is hidden); 409 while another "
            "entry names it",
            _json({"type": "object", "properties": {"deleted": {"type": "string"}}}, "deleted"),
            params=[_MODEL_NAME],
            errors=("403", "404", "409"),
            tag=_MODELS,
        ),
    },
    "/api/openapi.json": {
        "get": _op("This document", _json({"type": "object"}, "OpenAPI 3.1"), tag=_STATUS),
    },
    "/metrics": {
        "get": _op(
            "Prometheus metrics (text format): requests by outcome, tokens, keys by state, "
            "in-flight, queued, rejected, shared-state form",
            {
                "description": "Prometheus text exposition format 0.0.4",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            },
            tag=_STATUS,
        ),
    },
}

PATHS.update(openapi_clients.paths(_op, _json, _body, _ref, _path_param))
SCHEMAS.update(openapi_clients.SCHEMAS)
SCHEMAS["Stats"]["properties"]["clients"] = {
    "type": "object",
    "description": "usage per client key, by client id",
    "additionalProperties": _ref("ClientUsage"),
}
SCHEMAS["RequestRecord"]["properties"]["client_name"] = {
    "type": "string",
    "description": "the client key's name; empty for the gateway password",
}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "keygate admin API",
        "version": __version__,
        "description": (
            "Manage the keys, providers and settings of a running keygate gateway. Every "
            "endpoint except POST /api/session needs admin auth: `Authorization: Bearer "
            "<ADMIN_PASSWORD or admin token>`, or the session cookie (then writes also need the "
            "header `x-keygate-csrf: 1`). Keys are only ever returned masked."
        ),
    },
    "servers": [{"url": "/"}],
    "security": [{"bearer": []}, {"session": []}],
    "tags": [
        {"name": t} for t in (_SESSION, _PROVIDERS, _KEYS, _MODELS, openapi_clients.TAG, _STATUS)
    ],
    "paths": PATHS,
    "components": {
        "schemas": SCHEMAS,
        "securitySchemes": {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "ADMIN_PASSWORD or admin token",
            },
            "session": {"type": "apiKey", "in": "cookie", "name": "keygate_session"},
        },
    },
}


def document(providers: Iterable[str]) -> dict[str, Any]:
    """OPENAPI with the running gateway's provider names as the allowed values of every
    `provider` body field: a client (or a schema-driven tester) then knows that any other
    name is refused with a 400."""
    doc = copy.deepcopy(OPENAPI)
    names = sorted(providers)
    for item in doc["paths"].values():
        for op in item.values():
            schema = op.get("requestBody", {}).get("content", {}).get("application/json", {})
            field = schema.get("schema", {}).get("properties", {}).get("provider")
            if field is not None:
                optional = "null" in field["type"]  # then empty or null means the default
                field["enum"] = [*names, "", None] if optional else names
    return doc
