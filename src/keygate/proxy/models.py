"""`GET /v1/models` on the unified endpoint: the merged list (`keygate.modellist`), from memory."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from keygate.proxy.exchange import Exchange
from keygate.proxy.forward import EXPOSE_HEADERS

if TYPE_CHECKING:
    from keygate.gateway import Gateway

MERGED = "keygate"  # x-keygate-provider of the merged list: no one provider answered it


async def serve_model_list(gw: Gateway, send: Any, ex: Exchange) -> None:
    body = await gw.model_lists.answer()
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
