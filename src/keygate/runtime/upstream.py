"""The pooled client every upstream request goes through (proxy, key tests, re-checks).

A low module of its own so the gateway's life cycle and the request path both use it without
importing each other.
"""

from __future__ import annotations

import aiohttp
from yarl import URL

from keygate import __version__

# What the upstream sees when the client names no agent (a client's own User-Agent replaces
# it): keygate, not the HTTP library. Set on the session, and no `skip_auto_headers`: with
# those, aiohttp builds and copies two header maps for every request (~2 % of a proxied
# request's instructions); the request path supplies the Content-Type it would skip.
USER_AGENT = f"keygate/{__version__}"


def create_session(
    connector: aiohttp.BaseConnector | None = None, trust_env: bool = False
) -> aiohttp.ClientSession:
    """Unlimited pooled connections, bytes relayed as received, no cookies kept. `connector`:
    an egress proxy's (runtime.egress); `trust_env`: the standard *_PROXY variables."""
    return aiohttp.ClientSession(
        connector=connector
        or aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=60),
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        headers={"User-Agent": USER_AGENT},
        trust_env=trust_env,
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
