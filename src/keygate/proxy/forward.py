"""One upstream exchange on the pooled client: headers in and out, timeouts, body chunks.

Header hygiene lives here: the client's credentials, cookies and hop-by-hop headers never
reach the upstream; the provider key is injected the way the request's dialect sends it; the
upstream is asked for `identity` so the bytes we relay always match the headers we relay.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import aiohttp

from keygate.dialects import CREDENTIAL_HEADERS, Dialect
from keygate.http.errors import GatewayError
from keygate.proxy.watchdog import Watchdog, absorb_cancel
from keygate.runtime.upstream import upstream_url

if TYPE_CHECKING:
    from keygate.proxy.exchange import Exchange

_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Never forwarded upstream: hop-by-hop, the client's credentials, what the client library
# computes for its own connection, and what would reveal the client to the provider.
_DROP_REQUEST = (
    _HOP_BY_HOP
    | CREDENTIAL_HEADERS
    | {
        b"host",
        b"content-length",
        b"authorization",  # a bearer password for keygate, whatever the provider's dialect
        b"cookie",
        b"cookie2",
        b"accept-encoding",
        b"forwarded",
        b"x-forwarded-for",
        b"x-forwarded-host",
        b"x-forwarded-proto",
        b"x-real-ip",
        b"expect",  # we hold the whole body already; 100-continue would only add a round trip
        # a browser page's identity: some providers refuse browser-origin requests outright
        b"origin",
        b"referer",
    }
)
_BROWSER_PREFIX = b"sec-"  # Sec-Fetch-*, Sec-CH-UA*, Sec-WebSocket-*: the browser's, not ours
# Not relayed back: hop-by-hop, and cookies the provider sets for its own domain.
_DROP_RESPONSE = _HOP_BY_HOP | {b"set-cookie"}
# Answers are CORS-open (`Access-Control-Allow-Origin: *`, never with credentials), and for such
# requests `*` exposes every header: retry-after, x-ratelimit-*, x-request-id, whatever a
# provider adds, without a list to keep up to date. Set-Cookie is never exposable anyway.
EXPOSE_HEADERS = (b"access-control-expose-headers", b"*")
_CORS_OPEN = ((b"access-control-allow-origin", b"*"), EXPOSE_HEADERS)


class UpstreamTimeout(Exception):
    """No answer in time: connect, first byte or the idle gap between chunks."""


class UpstreamUnreachable(Exception):
    """Connection refused, reset or dropped before an answer."""


def _text(value: bytes) -> str:
    """aiohttp writes header values as UTF-8: decode them so, or non-ASCII bytes get mangled."""
    try:
        return value.decode()
    except UnicodeDecodeError:
        return value.decode("latin-1")


def request_headers(
    client_headers: list[tuple[bytes, bytes]], wire: Dialect, secret: str, body: bool = False
) -> list[tuple[str, str]]:
    """What goes upstream: the client's headers less what never may, plus `wire`'s key. A
    `body` the client sent without a Content-Type goes as JSON (every API here takes JSON;
    aiohttp would call it application/octet-stream)."""
    drop = _DROP_REQUEST
    typed = False
    for name, value in client_headers:
        if name == b"connection":
            # headers the client marked hop-by-hop stay with this hop (RFC 9110 §7.6.1)
            drop = drop | {t.strip().lower() for t in value.split(b",")}
        elif name == b"content-type":
            typed = True
    out = [
        (n.decode("latin-1"), v.decode("ascii") if v.isascii() else _text(v))
        for n, v in client_headers
        if n not in drop and not n.startswith(_BROWSER_PREFIX)
    ]
    if body and not (typed and b"content-type" not in drop):
        out.append(("content-type", "application/json"))
    out.append(("accept-encoding", "identity"))
    wire.add_key(out, secret)
    return out


_RELAYED_NAMES: dict[bytes, bytes] = {}  # an upstream's name as sent → lowercased; b"": dropped
_CORS_NAMES = frozenset((b"access-control-allow-origin", b"access-control-expose-headers"))


def _relayed_name(name: bytes) -> bytes:
    """A name not seen before: lowercased, or b"" when it is not relayed (remembered, bounded:
    a provider sends the same few names again and again)."""
    lname = name.lower()
    if lname in _DROP_RESPONSE:
        lname = b""
    if len(_RELAYED_NAMES) >= 1024:
        _RELAYED_NAMES.clear()
    _RELAYED_NAMES[name] = lname
    return lname


def response_headers(
    raw_headers: tuple[tuple[bytes, bytes], ...], secret: bytes = b"\0", masked: bytes = b""
) -> list[tuple[bytes, bytes]]:
    """The upstream's headers to relay (`resp.raw_headers`), with `secret` (the key this try
    injected) masked in values. Built only for the answer that is relayed."""
    out = []
    cors = expose = False
    known = _RELAYED_NAMES.get
    for name, value in raw_headers:
        lname = known(name)
        if lname is None:
            lname = _relayed_name(name)
        if not lname:
            continue
        if lname in _CORS_NAMES:  # the upstream's own CORS headers are kept, not doubled
            if lname == b"access-control-allow-origin":
                cors = True
            else:
                expose = True
        # `replace` hands back the same object when there is nothing to mask, and costs less
        # than a search first (`find` parses its arguments the slow way; `in` on bytes raises
        # and swallows a TypeError before it searches)
        out.append((lname, value.replace(secret, masked)))
    if not (cors or expose):
        out += _CORS_OPEN
    elif not cors:
        out.append((b"access-control-allow-origin", b"*"))
    elif not expose:
        out.append(EXPOSE_HEADERS)
    return out


def lower_headers(resp: aiohttp.ClientResponse) -> dict[str, str]:
    return {k.lower(): v for k, v in resp.headers.items()}


async def open_upstream(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    headers: list[tuple[str, str]],
    body: bytes | None,
    timeout: aiohttp.ClientTimeout,
    dog: Watchdog,
    first_byte_s: float,
) -> aiohttp.ClientResponse:
    """Send the request and wait for the response head; the caller must release the response.

    `dog` watches for the first byte from here; on success whoever reads the body stops it,
    on failure it is stopped here."""
    dog.watch(first_byte_s)
    answered = False
    try:
        resp = await session.request(
            method,
            upstream_url(url),
            headers=headers,
            data=body,
            timeout=timeout,
            allow_redirects=False,
        )
        answered = True
        return resp
    except asyncio.CancelledError:
        if not absorb_cancel(dog.fired):
            raise
        raise UpstreamTimeout(f"no response within {first_byte_s:g}s") from None
    except (aiohttp.ConnectionTimeoutError, aiohttp.ServerTimeoutError):
        raise UpstreamTimeout("connect timed out") from None
    except aiohttp.ClientConnectorError as exc:
        raise UpstreamUnreachable(
            f"cannot connect: {exc.os_error.strerror or exc.os_error}"
        ) from None
    except (aiohttp.ClientError, OSError) as exc:
        raise UpstreamUnreachable(f"connection failed: {type(exc).__name__}") from None
    finally:
        if not answered:
            dog.stop()


async def read_limited(resp: aiohttp.ClientResponse, limit: int, idle_s: float) -> bytes:
    """An error body, bounded, so it can be inspected and relayed or dropped before a retry."""
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(idle_s):
            while size < limit:
                chunk = await resp.content.readany()
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
    except (TimeoutError, aiohttp.ClientError, OSError):
        pass
    return b"".join(chunks)[:limit]


async def read_answer(
    resp: aiohttp.ClientResponse, ex: Exchange, idle_s: float, limit: int = 0
) -> bytes:
    """A whole 2xx answer, read before any of it is sent, so a broken or silent upstream
    becomes a clean 502/504. `limit` (0: none) bounds what is held."""
    dog = ex.dog
    assert dog is not None
    content = resp.content
    chunks: list[bytes] = []
    size = 0
    try:
        while True:
            chunk = await content.readany()
            if not chunk:
                break
            chunks.append(chunk)
            dog.touch()
            if limit:
                size += len(chunk)
                if size > limit:
                    raise GatewayError(
                        502, "upstream answer too large to translate", "upstream_unreachable"
                    )
            if content.at_eof():
                break
    except asyncio.CancelledError:
        if not absorb_cancel(dog.fired and not ex.disconnected):
            raise
        raise GatewayError(
            504, f"upstream went silent for {idle_s:g}s mid-response", "upstream_timeout"
        ) from None
    except (aiohttp.ClientError, OSError) as exc:
        raise GatewayError(
            502, f"upstream broke mid-response: {type(exc).__name__}", "upstream_unreachable"
        ) from None
    dog.pause()  # the upstream is done; a slow client is not its silence
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
