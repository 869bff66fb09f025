"""The exact response cache's storage, in process (SPEC §19): per provider, an LRU bounded in
bytes (not entries), each entry living `ttl_s`. An entry holds the answer as the client
received it, ready to write: a hit is served without parsing anything."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

Headers = list[tuple[bytes, bytes]]
RESULTS = ("hit", "miss", "bypass")


class Stored:
    """One answer: its status, headers and body as sent (a stream's events joined, in
    order), what it cost upstream (tokens) and when it expires."""

    __slots__ = ("body", "expires", "headers", "size", "status", "tokens")

    def __init__(
        self, status: int, headers: Headers, body: bytes, tokens: int, expires: float
    ) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.tokens = tokens
        self.expires = expires
        self.size = len(body) + sum(len(n) + len(v) for n, v in headers) + 64


class ProviderCache:
    """One provider's entries, least recently used first; at most `max_bytes` held."""

    __slots__ = ("bytes", "entries", "max_bytes")

    def __init__(self, max_bytes: int) -> None:
        self.entries: OrderedDict[bytes, Stored] = OrderedDict()
        self.bytes = 0
        self.max_bytes = max_bytes

    def get(self, key: bytes, now: float) -> Stored | None:
        found = self.entries.get(key)
        if found is None:
            return None
        if found.expires <= now:
            self.drop(key)
            return None
        self.entries.move_to_end(key)
        return found

    def drop(self, key: bytes) -> None:
        gone = self.entries.pop(key, None)
        if gone is not None:
            self.bytes -= gone.size + len(key)

    def put(self, key: bytes, stored: Stored) -> bool:
        size = stored.size + len(key)
        if size > self.max_bytes:
            return False  # would push out everything else and still not fit
        self.drop(key)
        self.entries[key] = stored
        self.bytes += size
        self.evict()
        return True

    def evict(self) -> None:
        while self.bytes > self.max_bytes and self.entries:
            key, gone = self.entries.popitem(last=False)
            self.bytes -= gone.size + len(key)


class ResponseCache:
    """Every provider's entries and the counters of `/api/stats` and `/metrics`. `clock`:
    monotonic seconds (a test's fake clock)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.stores: dict[str, ProviderCache] = {}
        # per provider: hit, miss, bypass, tokens saved
        self.counts: dict[str, list[int]] = {}

    def count(self, provider: str, result: int, tokens: int = 0) -> None:
        c = self.counts.get(provider)
        if c is None:
            c = self.counts[provider] = [0, 0, 0, 0]
        c[result] += 1
        c[3] += tokens

    def get(self, provider: str, key: bytes) -> Stored | None:
        store = self.stores.get(provider)
        return store.get(key, self.clock()) if store is not None else None

    def put(
        self,
        provider: str,
        key: bytes,
        status: int,
        headers: Headers,
        body: bytes,
        tokens: int,
        ttl_s: float,
        max_bytes: int,
    ) -> bool:
        store = self.stores.get(provider)
        if store is None:
            store = self.stores[provider] = ProviderCache(max_bytes)
        elif store.max_bytes != max_bytes:  # the bound was changed at run time
            store.max_bytes = max_bytes
            store.evict()
        stored = Stored(status, headers, body, tokens, self.clock() + ttl_s)
        return store.put(key, stored)

    def clear(self, provider: str | None = None) -> int:
        """Entries removed (every provider's, or one's)."""
        names = list(self.stores) if provider is None else [provider]
        removed = 0
        for name in names:
            store = self.stores.pop(name, None)
            if store is not None:
                removed += len(store.entries)
        return removed

    def snapshot(self) -> dict[str, Any]:
        """`/api/stats`' `cache`: totals and per provider."""
        providers: dict[str, dict[str, int]] = {}
        for name in sorted(set(self.counts) | set(self.stores)):
            hit, miss, bypass, saved = self.counts.get(name, [0, 0, 0, 0])
            store = self.stores.get(name)
            providers[name] = {
                "hits": hit,
                "misses": miss,
                "bypasses": bypass,
                "entries": len(store.entries) if store is not None else 0,
                "bytes": store.bytes if store is not None else 0,
                "tokens_saved": saved,
            }
        total = {
            k: sum(p[k] for p in providers.values())
            for k in ("hits", "misses", "bypasses", "entries", "bytes", "tokens_saved")
        }
        return {**total, "providers": providers}
