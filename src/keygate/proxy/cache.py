"""The exact response cache on the request path (SPEC §19): a stage before admission.

A provider with `cache:` has each POST looked up by its key (the client's path, the route, the
body in canonical JSON, the scope) before anything is admitted: a hit is written back as it was
stored (no key, no rate token, no quota); a miss goes on, and the relay's `CacheTee`
(`proxy.transforms`) stores its answer if it ends as a complete 200. A provider without
`cache:` never reaches this module.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from keygate.config.provider_config import ProviderConfig
    from keygate.proxy.exchange import Exchange
    from keygate.runtime.cache import ResponseCache

HEADER = b"x-keygate-cache"
HIT = (HEADER, b"hit")
MISS = (HEADER, b"miss")
BYPASS = (HEADER, b"bypass")
_HIT, _MISS, _BYPASS = 0, 1, 2  # `ResponseCache.count`'s results


class Pending:
    """A cached route's request on its way upstream: where its answer goes (`key` None: a
    bypass, nothing stored) and the header that says so."""

    __slots__ = ("cache", "key", "max_bytes", "provider", "tag", "ttl_s")

    def __init__(
        self,
        cache: ResponseCache,
        provider: str,
        key: bytes | None,
        ttl_s: float,
        max_bytes: int,
    ) -> None:
        self.cache = cache
        self.provider = provider
        self.key = key
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self.tag = MISS if key is not None else BYPASS

    def store(
        self, status: int, headers: list[tuple[bytes, bytes]], body: bytes, tokens: int
    ) -> None:
        if self.key is not None:
            self.cache.put(
                self.provider, self.key, status, headers, body, tokens, self.ttl_s, self.max_bytes
            )


def directive(headers: list[tuple[bytes, bytes]]) -> str:
    """What the client asked of the cache: "off" (`x-keygate-cache: off`, `Cache-Control:
    no-store`), "refresh" (`x-keygate-cache: refresh`, `Cache-Control: no-cache`) or "on"."""
    asked = "on"
    for name, value in headers:
        if name == HEADER:
            v = value.strip().lower()
            if v == b"off":
                return "off"
            if v == b"refresh":
                asked = "refresh"
        elif name == b"cache-control":
            v = value.lower()
            if b"no-store" in v:
                return "off"
            if b"no-cache" in v:
                asked = "refresh"
    return asked


def cache_key(parts: tuple[str, ...], body: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    """A digest of `parts` (method, client path, query, provider, upstream path, model, scope),
    the body as canonical JSON (sorted keys, no insignificant whitespace; a body that is not
    JSON as it is) and the encodings the client accepts (a stored gzip answer is only for
    a client that reads gzip). Never a credential: the scope is a client key's id."""
    try:
        canonical = orjson.dumps(orjson.loads(body), option=orjson.OPT_SORT_KEYS)
    except orjson.JSONDecodeError:
        canonical = body
    digest = hashlib.blake2b(digest_size=20)
    for part in parts:
        digest.update(part.encode())
        digest.update(b"\0")
    for name, value in headers:
        if name == b"accept-encoding":
            digest.update(value)
    digest.update(b"\0")
    digest.update(canonical)
    return digest.digest()


async def lookup(
    cache: ResponseCache,
    ex: Exchange,
    send: Any,
    cfg: ProviderConfig,
    parts: tuple[str, str, str, str],
    body: bytes,
    headers: list[tuple[bytes, bytes]],
) -> bool:
    """Answer from the cache (True), or leave `ex.cache` saying what becomes of the answer.
    `parts`: method, client path, query, upstream path."""
    settings = cfg.cache
    assert settings is not None
    name = cfg.name
    asked = directive(headers)
    if asked == "off":
        cache.count(name, _BYPASS)
        ex.cache = Pending(cache, name, None, 0, 0)
        return False
    client = ex.client
    # the password's callers share one scope; a client key has its own unless shared
    scope = "" if client is None or cfg.cache_scope == "shared" else f"client:{client.id}"
    key = cache_key((*parts, name, ex.model, scope), body, headers)
    if asked == "on":
        found = cache.get(name, key)
        if found is not None:
            cache.count(name, _HIT, found.tokens)
            ex.serve(name, ex.model, cfg.affinity == "off")
            ex.status = found.status
            ex.finishing = True
            out = [*found.headers, *ex.served, HIT]
            await send({"type": "http.response.start", "status": found.status, "headers": out})
            await send({"type": "http.response.body", "body": found.body})
            return True
    cache.count(name, _MISS)
    ex.cache = Pending(cache, name, key, settings.ttl_s, settings.max_bytes)
    return False
