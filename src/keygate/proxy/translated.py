"""Relaying an answer that changes family on the way (`Exchange.adapter` is set).

The same rules as the plain relay (`handler._relay_whole` / `_relay_stream`): the injected key
is masked in the bytes the client receives (after translation, which may join a key the
upstream sent in pieces), usage is read from the upstream's own bytes,
the watchdog tells a silent upstream from a slow client. What differs: a whole answer is
rebuilt in the client's family, and a stream goes through the adapter's state machine event by
event. A stream that breaks still ends as the client's SDK reads an error: Anthropic clients
get `event: error`, OpenAI clients an error chunk and a connection closed without [DONE].
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from keygate.asgi import send_whole
from keygate.control.base import Event
from keygate.proxy.errors import GatewayError
from keygate.proxy.exchange import Exchange
from keygate.proxy.forward import EXPOSE_HEADERS, read_answer
from keygate.proxy.redact import StreamScrubber
from keygate.proxy.watchdog import absorb_cancel
from keygate.settings import ProviderConfig
from keygate.translate import Adapter, Untranslatable
from keygate.translate.adapter import MAX_ANSWER_BYTES
from keygate.translate.wire import Doc

_LOCAL_HEADERS = [
    (b"content-type", b"application/json"),
    (b"access-control-allow-origin", b"*"),
    EXPOSE_HEADERS,
]


def translate_request(adapter: Adapter, body: bytes, cfg: ProviderConfig) -> bytes:
    """The upstream's body (the provider's default model filled in as for any request), or a
    400 in the client's shape naming what cannot be translated."""
    try:
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


def _is_stream(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name == b"content-type":
            return value.lower().startswith(b"text/event-stream")
    return False


async def relay_translated(
    ex: Exchange,
    send: Any,
    resp: aiohttp.ClientResponse,
    headers: list[tuple[bytes, bytes]],
    secret: bytes,
    masked: bytes,
    idle: float,
    first: bytes = b"",
) -> Event:
    """`first`: a stream's opening bytes, already read to judge its first event."""
    if _is_stream(headers):
        return await _stream(ex, send, resp, headers, StreamScrubber(secret, masked), idle, first)
    return await _whole(ex, send, resp, headers, secret, masked, idle)


async def _whole(
    ex: Exchange,
    send: Any,
    resp: aiohttp.ClientResponse,
    headers: list[tuple[bytes, bytes]],
    secret: bytes,
    masked: bytes,
    idle: float,
) -> Event:
    dog, adapter, wire = ex.dog, ex.adapter, ex.wire
    assert dog is not None and adapter is not None and wire is not None
    body = await read_answer(resp, ex, idle, MAX_ANSWER_BYTES)
    wire.scan_usage(body, ex.usage, True)
    try:
        body = adapter.answer(body)
    except ValueError:
        raise GatewayError(
            502, "the upstream's answer could not be translated", "upstream_unreachable"
        ) from None
    body = body.replace(secret, masked)  # what the client reads: the translation decoded it
    headers = adapter.headers(headers, False)
    headers.append((b"content-length", str(len(body)).encode()))
    ex.status = resp.status
    ex.finishing = True
    await send({"type": "http.response.start", "status": resp.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
    return Event.OK


async def _stream(
    ex: Exchange,
    send: Any,
    resp: aiohttp.ClientResponse,
    headers: list[tuple[bytes, bytes]],
    scrubber: StreamScrubber,
    idle: float,
    first: bytes,
) -> Event:
    dog, adapter, wire = ex.dog, ex.adapter, ex.wire
    assert dog is not None and adapter is not None and wire is not None
    translator = adapter.stream()
    await send(
        {
            "type": "http.response.start",
            "status": resp.status,
            "headers": adapter.headers(headers, True),
        }
    )
    ex.status = resp.status
    content = resp.content
    usage = ex.usage
    scan_usage = wire.scan_usage
    try:
        while not translator.closed:
            if first:
                chunk, first = first, b""
            else:
                chunk = await content.readany()
            if not chunk:
                break
            dog.pause()  # a slow client is not an idle upstream
            scan_usage(chunk, usage)
            out = scrubber.feed(translator.feed(chunk))
            if out:
                await send({"type": "http.response.body", "body": out, "more_body": True})
            dog.touch()
    except asyncio.CancelledError:
        if not absorb_cancel(dog.fired and not ex.disconnected):
            raise
        ex.error = f"upstream went silent for {idle:g}s mid-response"
    except (aiohttp.ClientError, OSError) as exc:
        ex.error = f"upstream broke mid-response: {type(exc).__name__}"
    if ex.error:
        out = scrubber.feed(translator.fail(ex.error)) + scrubber.flush()
    else:
        out = scrubber.feed(translator.end()) + scrubber.flush()
        if translator.failed:
            ex.error = "upstream stream ended before the answer was complete"
    if translator.abort:
        # an OpenAI client learns of the break from the missing [DONE] and the cut connection
        if out:
            await send({"type": "http.response.body", "body": out, "more_body": True})
        return Event.PROVIDER_ERROR
    ex.finishing = True
    await send({"type": "http.response.body", "body": out})
    return Event.OK if not ex.error else Event.PROVIDER_ERROR
