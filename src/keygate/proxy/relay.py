"""The answer's way back to the client: one loop for every answer, whole or streamed, plain or
translated, through the answer's chain of transforms (`proxy.transforms`).

A body of known, modest length (or any translated answer that is not a stream) is read whole
first, so a broken upstream becomes a clean 502/504 and a Content-Length can follow what the
transforms made of it. Anything else streams as it arrives: only what a transform must hold
(a tail that may begin the key, half an event) waits for the next chunk. Usage is read from the
upstream's own bytes; the watchdog tells a silent upstream from a slow client. A stream that
breaks ends as the client's SDK reads an error: a cut connection, or (an Anthropic client of a
translated stream) a last `error` event.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp

from keygate.control.base import Event
from keygate.http.errors import GatewayError
from keygate.proxy.forward import read_answer, response_headers
from keygate.proxy.transforms import (
    CacheTee,
    Decompress,
    Headers,
    Transform,
    chain_for,
    decompress_for,
)
from keygate.proxy.watchdog import absorb_cancel
from keygate.translate.adapter import MAX_ANSWER_BYTES

if TYPE_CHECKING:
    from keygate.control.keypool import KeyEntry
    from keygate.dialects.budget import Announced
    from keygate.proxy.exchange import Exchange
    from keygate.runtime.provider import ProviderRuntime


class Holder(Protocol):
    """What holds the key a relayed answer was asked with (`attempt.Attempt`): the relay
    tells it what the try came to, and it gives the key back after the last byte."""

    entry: KeyEntry
    event: Event
    budget: list[Announced] | None


WHOLE_BODY_LIMIT = 1 << 20  # a plain 2xx body up to this length is read whole before it is sent


async def relay(
    rt: ProviderRuntime,
    ex: Exchange,
    send: Any,
    resp: aiohttp.ClientResponse,
    attempt: Holder,
    head: bool,
    first: bytes = b"",
) -> None:
    """Relay the upstream answer; what it came to goes to `attempt`, which releases the key
    after the last byte. `first`: a stream's opening bytes, already read to judge it."""
    dog = ex.dog
    entry: KeyEntry = attempt.entry
    assert dog is not None and ex.wire is not None
    idle = rt.cfg.timeout_idle_s
    secret = entry.secret.encode()
    masked = entry.masked.encode()
    headers = response_headers(resp.raw_headers, secret, masked)
    headers += ex.served
    event = Event.CANCELLED
    # a cached route's answer is copied for the cache when it may be stored (SPEC §19)
    tee = None
    if ex.cache is not None and ex.cache.key is not None and resp.status == 200:
        tee = CacheTee(ex.cache)
    try:
        dog.watch(idle)
        length = resp.content_length
        if ex.adapter is not None:
            chain = chain_for(secret, masked, ex.adapter, tee)
            # what a translation reads must be plain: a compressed answer is inflated first
            inflate = decompress_for(headers, MAX_ANSWER_BYTES)
            if inflate is not None:
                headers = inflate.head(headers, False)
            if not _is_stream(headers):
                event = await _whole(
                    ex, send, resp, headers, chain, idle, MAX_ANSWER_BYTES, inflate=inflate
                )
                return
        else:
            if length is not None and not head:
                if 0 < length <= WHOLE_BODY_LIMIT:
                    # a plain whole answer's one transform, the key scrub, is one replace:
                    # no chain is built for it (`KeyScrub.whole`)
                    whole = None if tee is None else chain_for(secret, masked, None, tee)
                    event = await _whole(ex, send, resp, headers, whole, idle, 0, secret, masked)
                    return
                # too big to hold: a replacement would change the length: stream it unframed
                headers = [h for h in headers if h[0] != b"content-length"]
            chain = chain_for(secret, masked, None, tee)
            inflate = None
        event = await _stream(ex, send, resp, headers, chain, idle, first, inflate)
    except GatewayError:
        event = Event.PROVIDER_ERROR
        raise
    finally:
        dog.stop()
        if event is Event.OK:
            resp.release()
            if tee is not None and not ex.error:
                tee.commit(ex.usage[0] + ex.usage[1])
        else:
            resp.close()
        # the outcome's counters before the release, which marks the key for the next flush
        if event is Event.OK:
            entry.ok += 1
        elif event is Event.PROVIDER_ERROR:
            entry.err_5xx += 1
        entry.tokens_in += ex.usage[0]
        entry.tokens_out += ex.usage[1]
        # what the try came to (`Attempt.settle`, written out: this runs on every request)
        attempt.event = event
        attempt.budget = ex.wire.read_budget(resp.headers)


def _is_stream(headers: Headers) -> bool:
    for name, value in headers:
        if name == b"content-type":
            return value.lower().startswith(b"text/event-stream")
    return False


async def _whole(
    ex: Exchange,
    send: Any,
    resp: aiohttp.ClientResponse,
    headers: Headers,
    chain: Transform | None,
    idle: float,
    limit: int,
    secret: bytes = b"",
    masked: bytes = b"",
    inflate: Decompress | None = None,
) -> Event:
    """Nothing is sent before the whole body is here: a broken upstream becomes a clean 502.
    No `chain`: a plain answer, whose key scrub is one replace of `secret`."""
    assert ex.wire is not None
    body = await read_answer(resp, ex, idle, limit)
    if inflate is not None:
        body = inflate.whole(body)
    ex.wire.scan_usage(body, ex.usage, True)
    if chain is None:
        out = body.replace(secret, masked)  # the same object when there was nothing to mask
    else:
        out = chain.whole(body)
        headers = chain.head(headers, False)
    if out is not body:  # the length follows what the transforms made of it
        headers = [h for h in headers if h[0] != b"content-length"]
        headers.append((b"content-length", str(len(out)).encode()))
    ex.status = resp.status
    ex.finishing = True
    # sent inline, not through `asgi.respond`: a coroutine per request
    await send({"type": "http.response.start", "status": resp.status, "headers": headers})
    await send({"type": "http.response.body", "body": out})
    return Event.OK


async def _stream(
    ex: Exchange,
    send: Any,
    resp: aiohttp.ClientResponse,
    headers: Headers,
    chain: Transform,
    idle: float,
    first: bytes,
    inflate: Decompress | None,
) -> Event:
    """Chunks go on as they arrive; the last one goes with whatever the chain still held."""
    dog = ex.dog
    assert dog is not None and ex.wire is not None
    await send(
        {"type": "http.response.start", "status": resp.status, "headers": chain.head(headers, True)}
    )
    ex.status = resp.status
    content = resp.content
    usage = ex.usage
    scan_usage = ex.wire.scan_usage
    out = b""
    try:
        while not chain.done:
            if first:
                chunk, first = first, b""
            else:
                chunk = await content.readany()
                if not chunk:
                    break
            dog.pause()  # a slow client is not an idle upstream
            if inflate is not None:
                chunk = inflate.feed(chunk)
            scan_usage(chunk, usage)
            out = chain.feed(chunk)
            if content.at_eof():
                break  # `out` goes with the end
            if out:
                await send({"type": "http.response.body", "body": out, "more_body": True})
            out = b""
            dog.touch()
    except asyncio.CancelledError:
        if not absorb_cancel(dog.fired and not ex.disconnected):
            raise
        ex.error = f"upstream went silent for {idle:g}s mid-response"
    except (aiohttp.ClientError, OSError) as exc:
        ex.error = f"upstream broke mid-response: {type(exc).__name__}"
    except GatewayError as exc:  # what the upstream sent cannot be read (a corrupt inflate)
        ex.error = exc.message
    if ex.error:
        out = chain.fail(ex.error)
    else:
        if inflate is not None:
            out += chain.feed(inflate.close())
        out += chain.close()
        if chain.incomplete:
            ex.error = "upstream stream ended before the answer was complete"
    if ex.error and chain.aborts:
        # the client learns of the break from the cut connection (and, from a translated
        # OpenAI stream, the missing [DONE]): the server closes the response incomplete
        if out:
            await send({"type": "http.response.body", "body": out, "more_body": True})
        return Event.PROVIDER_ERROR
    ex.finishing = True
    await send({"type": "http.response.body", "body": out})
    return Event.OK if not ex.error else Event.PROVIDER_ERROR
