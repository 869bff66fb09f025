"""The pooled client every upstream request goes through (proxy, key tests, re-checks).

A low module of its own so the gateway's life cycle and the request path both use it without
importing each other.
"""

from __future__ import annotations

import aiohttp
from yarl import URL

# set once on the session: passed per request, aiohttp rebuilds the set every time
SKIP_AUTO_HEADERS = frozenset({"User-Agent", "Content-Type"})


def create_session() -> aiohttp.ClientSession:
    """Unlimited pooled connections, bytes relayed as received, no cookies kept."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=60),
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=SKIP_AUTO_HEADERS,
    )


_URLS: dict[str, URL] = {}


def upstream_url(url: str) -> URL:
    """Parsed once per distinct URL: a gateway sends the same few URLs again and again."""
    parsed = _URLS.get(url)
    if parsed is None:
        if len(_URLS) >= 1024:
            _URLS.clear()
        parsed = _URLS[url] = URL(url, encoded=True)
    return parsed
