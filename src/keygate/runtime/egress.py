"""Egress proxies on the request path (SPEC §16): one pooled session per proxy, keys assigned
to a provider's proxies by rendezvous hashing, and a proxy's failures charged to the proxy.

A provider without proxies has no `Egress` (its runtime's `egress` is None) and sends through
the gateway's one session exactly as before: nothing here runs for it.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import aiohttp_socks

from keygate.config.proxies import DIRECT, ENV, proxy_parts, show_proxy
from keygate.config.settings import ProviderConfig
from keygate.runtime.upstream import create_session

# What a failure of the proxy itself looks like: the proxy refuses or drops the connection,
# answers its own 407/502/503 to CONNECT, or a SOCKS handshake fails.
PROXY_ERRORS: tuple[type[Exception], ...] = (
    aiohttp_socks.ProxyError,
    aiohttp_socks.ProxyConnectionError,
    aiohttp_socks.ProxyTimeoutError,
    aiohttp.ClientProxyConnectionError,
    aiohttp.ClientHttpProxyError,
)


def proxy_failure(exc: BaseException) -> BaseException | None:
    """The proxy error behind `exc` (itself, or what it was raised from), else None."""
    seen: BaseException | None = exc
    for _ in range(4):
        if seen is None:
            return None
        if isinstance(seen, PROXY_ERRORS):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


class EgressSessions:
    """One pooled session per proxy URL, shared by every provider that uses that proxy."""

    def __init__(self) -> None:
        self._sessions: dict[str, aiohttp.ClientSession] = {}

    def get(self, url: str) -> aiohttp.ClientSession:
        session = self._sessions.get(url)
        if session is None:
            session = self._sessions[url] = _session_for(url)
        return session

    async def close(self) -> None:
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            await session.close()


def _session_for(url: str) -> aiohttp.ClientSession:
    if url == ENV:  # aiohttp reads HTTPS_PROXY/HTTP_PROXY/NO_PROXY per request
        return create_session(trust_env=True)
    scheme, host, port, user, password = proxy_parts(url)
    kind = (
        aiohttp_socks.ProxyType.HTTP
        if scheme.startswith("http")
        else aiohttp_socks.ProxyType.SOCKS5
    )
    connector = aiohttp_socks.ProxyConnector(
        host=host,
        port=port,
        proxy_type=kind,
        username=user,
        password=password,
        rdns=scheme == "socks5h",  # socks5h: the proxy resolves the upstream's name
        proxy_ssl=_tls() if scheme == "https" else None,
        limit=0,
        ttl_dns_cache=300,
        keepalive_timeout=60,
    )
    return create_session(connector=connector)


def _tls() -> Any:
    import ssl

    return ssl.create_default_context()


class ProxyState:
    """One proxy of one provider: its health, cooled like a key."""

    __slots__ = ("cooldown_until", "errors", "shown", "url", "weight_key")

    def __init__(self, url: str) -> None:
        self.url = url
        self.shown = show_proxy(url)
        self.weight_key = self.shown.encode()  # credentials rotate without moving keys
        self.errors = 0
        self.cooldown_until = 0.0

    def cooling(self, now: float) -> bool:
        return self.cooldown_until > now

    def public(self, now: float) -> dict[str, Any]:
        return {
            "url": self.shown,
            "status": "cooling" if self.cooling(now) else "active",
            "errors": self.errors,
            "cooldown_until": self.cooldown_until if self.cooling(now) else 0.0,
        }


def rendezvous_rank(key_id: int, states: list[ProxyState]) -> list[ProxyState]:
    """`states` best first for this key (highest random weight): adding or removing a proxy
    moves only the keys whose best it is."""
    tag = str(key_id).encode()

    def weight(state: ProxyState) -> int:
        digest = hashlib.blake2b(tag + b"|" + state.weight_key, digest_size=8).digest()
        return int.from_bytes(digest, "big")

    return sorted(states, key=weight, reverse=True)


class Egress:
    """A provider's proxies: which one a key goes through, their sessions and health. A key
    with its own proxy (`secret|proxy=URL`) goes through that one; the others are spread over
    the provider's list (none: direct)."""

    def __init__(
        self,
        cfg: ProviderConfig,
        urls: list[str],
        sessions: EgressSessions,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.states = [ProxyState(u) for u in urls]
        by_url = {s.url: s for s in self.states}
        self.own: dict[str, ProxyState | None] = {}  # secret → its own proxy (None: direct)
        for secret, url in cfg.key_proxies.items():
            if url == DIRECT:
                self.own[secret] = None
            else:
                self.own[secret] = by_url.setdefault(url, ProxyState(url))
        self.every = list(by_url.values())  # the list's and the keys' own, for health
        self.sessions = sessions
        self.clock = clock

    def route(self, key_id: int, secret: str) -> list[ProxyState]:
        """The proxies this key may go through, best first ([]: direct)."""
        if secret in self.own:
            own = self.own[secret]
            return [] if own is None else [own]
        return rendezvous_rank(key_id, self.states) if self.states else []

    def assigned(self, key_id: int, secret: str) -> str:
        """The key's proxy as shown (masked), or `direct`."""
        route = self.route(key_id, secret)
        return route[0].shown if route else DIRECT

    def pick(self, key_id: int, secret: str, avoid: list[ProxyState]) -> ProxyState | None:
        """The key's proxy, or the next by rank when it is cooling or was tried; None when
        the key goes direct or every proxy was tried. All cooling: the best one left (better
        than refusing)."""
        now = self.clock()
        ranked = [s for s in self.route(key_id, secret) if s not in avoid]
        if not ranked:
            return None
        for state in ranked:
            if not state.cooling(now):
                return state
        return ranked[0]

    def session(self, state: ProxyState) -> aiohttp.ClientSession:
        return self.sessions.get(state.url)

    def failed(self, state: ProxyState) -> None:
        state.errors += 1
        state.cooldown_until = self.clock() + self.cfg.proxy_cooldown_s

    def public(self) -> list[dict[str, Any]]:
        now = self.clock()
        return [s.public(now) for s in self.every]


def effective_proxies(cfg: ProviderConfig, default: list[str]) -> list[str]:
    """The provider's own list, else KEYGATE_PROXY's; empty when it goes direct."""
    urls = cfg.proxies or default
    return [] if urls == [DIRECT] else list(urls)


def needs_egress(cfg: ProviderConfig, default: list[str]) -> bool:
    """Whether the provider sends anything through a proxy (else it has no `Egress`)."""
    return bool(effective_proxies(cfg, default) or cfg.key_proxies)
