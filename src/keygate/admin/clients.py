"""/api/clients: issue, list, change and delete client keys (SPEC §13).

Every write goes to the store first, then applies to this gateway at once and is announced to
the other instances (`Gateway.clients_changed`). The key is in the answer to the POST only.
"""

from __future__ import annotations

import time
from typing import Any

from keygate.admin.components import CLIENT, DELETED_ID
from keygate.admin.http import ApiError, Reply, Request, not_found
from keygate.admin.schema import BOOL, INT, Param, Schema, arr, nullable, obj
from keygate.admin.table import op
from keygate.clients import ops
from keygate.observe.logs import log
from keygate.runtime.gateway import Gateway
from keygate.store.client_fields import ITEM_MAX, LIMIT_MAX, LIMITS, LIST_MAX, NAME_MAX

_TAG = "clients"
CLIENT_ID = Param("id", r"\d{1,18}", {"type": "integer", "minimum": 1}, "client id")
# What client_fields.clean accepts (it checks; the document says the same bounds).
_LIMIT_SAYS = {
    "rpm": "requests per sliding minute",
    "rpd": "requests per UTC day",
    "tpd": "tokens per UTC day",
    "monthly_tokens": "tokens per UTC month",
}
_LIMIT = {**nullable(INT), "minimum": 0, "maximum": LIMIT_MAX}


def _list(item: Schema, description: str) -> Schema:
    return {**nullable(arr(item, maxItems=LIST_MAX)), "description": description}


FIELDS: dict[str, Any] = {
    "name": {"type": "string", "minLength": 1, "maxLength": NAME_MAX, "pattern": r"\S"},
    **{n: {**_LIMIT, "description": f"{_LIMIT_SAYS[n]}; 0 or null: no limit"} for n in LIMITS},
    "providers": _list(
        {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,63}$"},
        "allowed providers; empty or null: any",
    ),
    "models": _list(
        {
            "type": "string",
            "maxLength": ITEM_MAX,
            "pattern": r"^(\s*\*\s*|[^*]*[^*\s][^*]*(/\*)?)$",
        },
        "allowed models: names, provider/model, provider/* or *; empty: any",
    ),
    "expires_at": {
        "oneOf": [
            {"type": "number", "minimum": 0, "exclusiveMaximum": 1e11},
            {"type": "string", "format": "date-time"},
            {"type": "null"},
        ],
        "description": "Unix seconds or ISO 8601; 0 or null: never",
    },
}


def _invalid(exc: ValueError) -> ApiError:
    message = str(exc)
    field = message.split(":", 1)[0] if ":" in message else None
    return ApiError(400, message, "invalid_value", param=field)


class ClientRoutes:
    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway

    @op(
        "GET",
        "/api/clients",
        "List client keys with usage today, this month and all time, and last use",
        tag=_TAG,
        answer=obj({"clients": arr(CLIENT), "total": INT}),
        answer_text="every client key",
    )
    async def list_clients(self, req: Request) -> Reply:
        clients = await ops.listing(self.gw.store, self.gw.clients, time.time())
        return Reply(200, {"clients": clients, "total": len(clients)})

    @op(
        "POST",
        "/api/clients",
        "Issue a client key: `key` (kgc- + 40 characters) is shown in this answer only",
        tag=_TAG,
        status=201,
        answer=obj(
            {
                "id": INT,
                "key": {"type": "string", "pattern": "^kgc-[A-Za-z0-9_-]{40}$"},
                "client": CLIENT,
            }
        ),
        answer_text="issued",
        body=obj(FIELDS, required=["name"], closed=True),
    )
    async def add_client(self, req: Request) -> Reply:
        doc = await req.json()
        try:
            rec, key = await ops.create(self.gw.store, doc)
        except ValueError as exc:
            raise _invalid(exc) from None
        await self.gw.clients_changed()
        log.info("admin: added client %r %s#%d", rec.name, rec.masked, rec.id)
        view = await ops.one(self.gw.store, self.gw.clients, rec, time.time())
        return Reply(201, {"id": rec.id, "key": key, "client": view})

    @op(
        "PATCH",
        "/api/clients/{id}",
        "Change a client's limits, lists, expiry or `enabled`; applies at once everywhere",
        tag=_TAG,
        answer=CLIENT,
        answer_text="the client now",
        body=obj({**FIELDS, "enabled": BOOL}, closed=True),
        body_required=False,
        params=(CLIENT_ID,),
        errors=(404,),
    )
    async def patch_client(self, req: Request, client_id_s: str) -> Reply:
        client_id = int(client_id_s)
        doc = await req.json()
        try:
            rec = await self.gw.store.update_client(client_id, doc)
        except ValueError as exc:
            raise _invalid(exc) from None
        if rec is None:
            raise not_found(f"no client with id {client_id}")
        await self.gw.clients_changed()
        log.info("admin: client #%d changed: %s", client_id, ", ".join(sorted(doc)) or "nothing")
        return Reply(200, await ops.one(self.gw.store, self.gw.clients, rec, time.time()))

    @op(
        "DELETE",
        "/api/clients/{id}",
        "Delete a client key; refused at once on every instance",
        tag=_TAG,
        answer=DELETED_ID,
        answer_text="deleted",
        params=(CLIENT_ID,),
        errors=(404,),
    )
    async def delete_client(self, req: Request, client_id_s: str) -> Reply:
        client_id = int(client_id_s)
        if not await self.gw.store.delete_client(client_id):
            raise not_found(f"no client with id {client_id}")
        await self.gw.clients_changed()
        log.info("admin: deleted client #%d", client_id)
        return Reply(200, {"deleted": client_id})
