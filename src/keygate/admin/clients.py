"""/api/clients: issue, list, change and delete client keys (SPEC §13).

Every write goes to the store first, then applies to this gateway at once and is announced to
the other instances (`Gateway.clients_changed`). The key is in the answer to the POST only.
"""

from __future__ import annotations

import time

from keygate.admin.http import ApiError, Reply, Request, Route, not_found, route
from keygate.clients import ops
from keygate.gateway import Gateway
from keygate.observe import log

_ID = r"(\d{1,18})"


def _invalid(exc: ValueError) -> ApiError:
    message = str(exc)
    field = message.split(":", 1)[0] if ":" in message else None
    return ApiError(400, message, "invalid_value", param=field)


class ClientRoutes:
    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway

    def routes(self) -> list[Route]:
        return [
            route("GET", r"/api/clients", self.list_clients),
            route("POST", r"/api/clients", self.add_client),
            route("PATCH", rf"/api/clients/{_ID}", self.patch_client),
            route("DELETE", rf"/api/clients/{_ID}", self.delete_client),
        ]

    async def list_clients(self, req: Request) -> Reply:
        clients = await ops.listing(self.gw.store, self.gw.clients, time.time())
        return Reply(200, {"clients": clients, "total": len(clients)})

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

    async def delete_client(self, req: Request, client_id_s: str) -> Reply:
        client_id = int(client_id_s)
        if not await self.gw.store.delete_client(client_id):
            raise not_found(f"no client with id {client_id}")
        await self.gw.clients_changed()
        log.info("admin: deleted client #%d", client_id)
        return Reply(200, {"deleted": client_id})
