"""Requests that change API family on the way (`Exchange.adapter` is set): the body
translated for the provider, a 400 in the client's shape for what cannot be, and answers an
adapter makes itself. The answer's way back is the relay's (`proxy.relay`, the translation
transform of `proxy.transforms`)."""

from __future__ import annotations

from typing import Any

from keygate.config.settings import ProviderConfig
from keygate.http.asgi import send_whole
from keygate.http.errors import GatewayError
from keygate.proxy.exchange import Exchange
from keygate.proxy.forward import EXPOSE_HEADERS
from keygate.translate import Adapter, Untranslatable
from keygate.translate.wire import Doc

_LOCAL_HEADERS = [
    (b"content-type", b"application/json"),
    (b"access-control-allow-origin", b"*"),
    EXPOSE_HEADERS,
]


def translate_request(
    adapter: Adapter, body: bytes, cfg: ProviderConfig, doc: Doc | None = None
) -> bytes:
    """The upstream's body (the provider's default model filled in as for any request), or a
    400 in the client's shape naming what cannot be translated. `doc`: the body already
    parsed (for affinity), not parsed again."""
    try:
        if doc is not None:
            return adapter.request_doc(doc, cfg.default_model, cfg.force_model)
        return adapter.request(body, cfg.default_model, cfg.force_model)
    except Untranslatable as exc:
        raise _refusal(cfg, exc) from None


def translate_doc(adapter: Adapter, doc: Doc, cfg: ProviderConfig, model: str) -> bytes:
    """`translate_request` for a routed request's body, parsed once for all its targets;
    `model` is the name this target is sent."""
    try:
        return adapter.request_doc(doc, cfg.default_model, cfg.force_model, model)
    except Untranslatable as exc:
        raise _refusal(cfg, exc) from None


def _refusal(cfg: ProviderConfig, exc: Untranslatable) -> GatewayError:
    return GatewayError(
        400, f"cannot translate this request for provider '{cfg.name}': {exc}", "untranslatable"
    )


async def answer_locally(ex: Exchange, send: Any) -> None:
    """An answer the adapter made itself (count_tokens): nothing goes upstream."""
    assert ex.adapter is not None and ex.adapter.local is not None
    ex.status = 200
    ex.finishing = True
    await send_whole(send, 200, _LOCAL_HEADERS, ex.adapter.local)
