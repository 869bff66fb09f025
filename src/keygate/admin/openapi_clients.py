"""The OpenAPI description of /api/clients (SPEC §13), merged into `admin.openapi`."""

from __future__ import annotations

from typing import Any

from keygate.client_fields import ITEM_MAX, LIMIT_MAX, LIST_MAX, NAME_MAX

TAG = "clients"
_LIMIT = {
    "type": ["integer", "null"],
    "minimum": 0,
    "maximum": LIMIT_MAX,
    "description": "0 or null: no limit",
}
_LIST = {
    "type": ["array", "null"],
    "maxItems": LIST_MAX,
    "items": {"type": "string", "minLength": 1, "maxLength": ITEM_MAX},
}
_FIELDS: dict[str, Any] = {
    "name": {"type": "string", "minLength": 1, "maxLength": NAME_MAX, "pattern": r"\S"},
    "rpm": {**_LIMIT, "description": "requests per sliding minute; 0 or null: no limit"},
    "rpd": {**_LIMIT, "description": "requests per UTC day; 0 or null: no limit"},
    "tpd": {**_LIMIT, "description": "tokens per UTC day; 0 or null: no limit"},
    "monthly_tokens": {**_LIMIT, "description": "tokens per UTC month; 0 or null: no limit"},
    "providers": {
        **_LIST,
        "items": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,63}$"},
        "description": "allowed providers; empty or null: any",
    },
    "models": {
        **_LIST,
        "items": {
            "type": "string",
            "maxLength": ITEM_MAX,
            "pattern": r"^(\s*\*\s*|[^*]*[^*\s][^*]*(/\*)?)$",
        },
        "description": "allowed models: names, provider/model, provider/* or *; empty: any",
    },
    "expires_at": {
        "oneOf": [
            {"type": "number", "exclusiveMinimum": 0, "maximum": 1e11},
            {"type": "string", "format": "date-time"},
            {"type": "null"},
        ],
        "description": "Unix seconds or ISO 8601; null: never",
    },
}
_USAGE = {
    "type": "object",
    "properties": {
        n: {"type": "integer"} for n in ("requests", "tokens_in", "tokens_out", "errors")
    },
}
SCHEMAS: dict[str, Any] = {
    "Client": {
        "type": "object",
        "description": "a client key (the key itself only in the answer to its creation)",
        "properties": {
            "id": {"type": "integer"},
            "name": {"type": "string"},
            "masked": {"type": "string"},
            "status": {"type": "string", "enum": ["active", "disabled", "expired"]},
            "enabled": {"type": "boolean"},
            **{k: {"type": ["integer", "null"]} for k in ("rpm", "rpd", "tpd", "monthly_tokens")},
            "providers": {"type": "array", "items": {"type": "string"}},
            "models": {"type": "array", "items": {"type": "string"}},
            "expires_at": {"type": ["number", "null"]},
            "created_at": {"type": "number"},
            "last_used": {"type": ["number", "null"]},
            "usage": {
                "type": "object",
                "properties": {"today": _USAGE, "month": _USAGE, "all": _USAGE},
            },
            "timeline": {
                "type": "array",
                "items": {"type": "integer"},
                "description": "requests per minute over the last hour (this instance)",
            },
        },
    },
    "ClientUsage": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "status": {"type": "string"},
            "today": _USAGE,
            "month": _USAGE,
            "all": _USAGE,
            "last_used": {"type": ["number", "null"]},
        },
    },
}


def paths(op: Any, json: Any, body: Any, ref: Any, path_param: Any) -> dict[str, Any]:
    """The paths, built with `admin.openapi`'s helpers (passed in: no import cycle)."""
    client_id = path_param("id", {"type": "integer", "minimum": 1}, "client id")
    create = {
        "type": "object",
        "required": ["name"],
        "additionalProperties": False,
        "properties": _FIELDS,
    }
    change = {
        "type": "object",
        "additionalProperties": False,
        "properties": {**_FIELDS, "enabled": {"type": "boolean"}},
    }
    return {
        "/api/clients": {
            "get": op(
                "List client keys with usage today, this month and all time, and last use",
                json(
                    {
                        "type": "object",
                        "properties": {
                            "clients": {"type": "array", "items": ref("Client")},
                            "total": {"type": "integer"},
                        },
                    },
                    "every client key",
                ),
                tag=TAG,
            ),
            "post": op(
                "Issue a client key: `key` (kgc- + 40 characters) is shown in this answer only",
                json(
                    {
                        "type": "object",
                        "properties": {
                            "id": {"type": "integer"},
                            "key": {"type": "string", "pattern": "^kgc-[A-Za-z0-9_-]{40}$"},
                            "client": ref("Client"),
                        },
                    },
                    "issued",
                ),
                status="201",
                body=body(create),
                errors=("400", "403"),
                tag=TAG,
            ),
        },
        "/api/clients/{id}": {
            "patch": op(
                "Change a client's limits, lists, expiry or `enabled`; applies at once everywhere",
                json(ref("Client"), "the client now"),
                body=body(change, required=False),
                params=[client_id],
                errors=("400", "403", "404"),
                tag=TAG,
            ),
            "delete": op(
                "Delete a client key; refused at once on every instance",
                json({"type": "object", "properties": {"deleted": {"type": "integer"}}}, "deleted"),
                params=[client_id],
                errors=("403", "404"),
                tag=TAG,
            ),
        },
    }
