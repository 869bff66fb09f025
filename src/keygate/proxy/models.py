"""`GET /v1/models` on the unified endpoint: the merged list (`keygate.runtime.modellist`), from memory."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from keygate.clients.registry import Client
from keygate.proxy.exchange import Exchange
from keygate.proxy.forward import EXPOSE_HEADERS
from keygate.runtime.modellist import OWNER

if TYPE_CHECKING:
    from keygate.runtime.gateway import Gateway

MERGED = "keygate"  # x-keygate-provider of the merged list: no one provider answered it


def allowed_entries(gw: Gateway, client: Client) -> list[dict[str, Any]]:
    """The merged list as a client with lists sees it: a provider's model when the client may
    send it there, an alias or group when it may use the name or one of its targets (what
    `clients.allowed_targets` lets through)."""
    routes = gw.models.routes
    out = []
    for item in gw.model_lists.entries():
        name: str = item["id"]
        route = routes.get(name) if item["owned_by"] == OWNER else None
        if route is not None:
            named = name in client.model_names
            if any(
                (named and client.provider_allowed(t.provider))
                or client.allows(t.provider, t.model)
                for t in route.targets
            ):
                out.append(item)
            continue
        provider = item["owned_by"]
        model = name if provider == gw.default_provider else name.split("/", 1)[1]
        if client.allows(provider, model):
            out.append(item)
    return out


async def serve_model_list(gw: Gateway, send: Any, ex: Exchange) -> None:
    body = await gw.model_lists.answer()
    client: Client | None = ex.client
    if client is not None and not (client.any_model and client.provider_set is None):
        body = orjson.dumps({"object": "list", "data": allowed_entries(gw, client)})
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"access-control-allow-origin", b"*"),
        EXPOSE_HEADERS,
        *ex.served,
    ]
    ex.status = 200
    ex.finishing = True
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
