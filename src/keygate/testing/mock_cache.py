"""The mock's prompt cache, per key as providers keep it (per organisation): a request reads
from cache the longest prefix of its prompt (system prompt, tools, then its messages in order,
from the first) that the same key was sent within the TTL, and the answer's usage reports that
prefix's tokens (`prompt_tokens_details.cached_tokens`, `cache_read_input_tokens`). Every
prefix of the request is then cached (or its TTL renewed). A request that found nothing waits
`miss_delay_s` more before its first byte, as a cold prompt does.

Like the providers it stands in for, it caches whatever it is sent: no minimum length, no
`cache_control` needed. Counters per key tell tests and the bench how often a conversation came
back to the key that had it: a `hit` found the prompt of the turn before (all but the last
answer and the new message), a `partial` only an older part (its first message, say), a
`miss` nothing.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import orjson

from keygate.testing.mock_wire import _tokens

CACHE_MAX = 200_000  # prefixes remembered, every key together (least recently used out first)
DEFAULT_TTL_S = 300.0


def _pieces(data: dict[str, Any], anthropic: bool) -> tuple[bytes, list[bytes]] | None:
    """(system prompt and tools, each message) serialised; None when there is no message."""
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        return None
    try:
        head = orjson.dumps((data.get("system") if anthropic else None, data.get("tools")))
        return head, [orjson.dumps(m) for m in messages]
    except TypeError:
        return None


class PromptCache:
    """Prompt prefixes seen per key, each for `ttl_s` after its last use."""

    def __init__(
        self, ttl_s: float = DEFAULT_TTL_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl_s = ttl_s
        self.miss_delay_s = 0.0
        self.enabled = True
        self.clock = clock
        self.hits: dict[str | None, int] = {}
        self.partial: dict[str | None, int] = {}
        self.misses: dict[str | None, int] = {}
        self._seen: OrderedDict[tuple[str | None, bytes], float] = OrderedDict()
        self._lock = threading.Lock()

    def reset(self) -> None:
        with self._lock:
            self.hits.clear()
            self.partial.clear()
            self.misses.clear()
            self._seen.clear()
        self.miss_delay_s = 0.0
        self.ttl_s = DEFAULT_TTL_S
        self.enabled = True

    def lookup(self, key: str | None, data: dict[str, Any], anthropic: bool) -> int:
        """The tokens of this request's prompt read from cache (0: nothing was); every prefix
        of it is cached from now on."""
        if not self.enabled:
            return 0
        pieces = _pieces(data, anthropic)
        if pieces is None:
            return 0
        head, messages = pieces
        h = hashlib.blake2b(head, digest_size=16)
        size = len(head)
        prefixes: list[tuple[bytes, int]] = []  # (digest, bytes) after each message
        for m in messages:
            h.update(m)
            size += len(m)
            prefixes.append((h.copy().digest(), size))
        now = self.clock()
        until = now + self.ttl_s
        found = 0  # messages in the longest prefix cached
        cached_bytes = 0
        with self._lock:
            seen = self._seen
            for n, (digest, nbytes) in enumerate(prefixes, 1):
                expires = seen.get((key, digest))
                if expires is not None and expires > now:
                    found, cached_bytes = n, nbytes
                seen[(key, digest)] = until
                seen.move_to_end((key, digest))
            while len(seen) > CACHE_MAX:
                seen.popitem(last=False)
            if not found:
                counts = self.misses
            elif found >= len(messages) - 2:
                counts = self.hits
            else:
                counts = self.partial
            counts[key] = counts.get(key, 0) + 1
        return _tokens(cached_bytes) if found else 0

    def stats(self) -> dict[str | None, tuple[int, int, int]]:
        """(hits, partial, misses) per key."""
        with self._lock:
            keys = set(self.hits) | set(self.partial) | set(self.misses)
            return {
                k: (self.hits.get(k, 0), self.partial.get(k, 0), self.misses.get(k, 0))
                for k in keys
            }
