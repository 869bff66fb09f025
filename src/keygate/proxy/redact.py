"""Provider keys never reach a client in an upstream's words.

Real providers echo the key they were sent ("Incorrect API key provided: sk-…"), so every answer
keygate relays is scrubbed: each occurrence of a pool secret becomes its masked form (the same
`mask` the admin API shows). Two costs, two paths:

- hot (2xx bodies, streams, every response's headers): only the secret keygate injected into
  this request can be in there, found with `bytes.find`; a stream holds back only a chunk tail
  that is a proper prefix of that secret, so an SSE chunk ending in "\\n\\n" is never delayed.
- cold (error bodies and headers, log and ring text): every secret of the provider, found as
  key-like tokens looked up in a table, so the cost does not grow with the number of keys.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping
from typing import Any

from keygate.masking import mask

# Key-like runs: what provider keys are made of. Secrets with other characters are searched
# one by one (`_Table.odd`), which real pools never have many of.
_TOKEN_CHARS = rb"A-Za-z0-9_\-"
_TOKEN_RE = re.compile(rb"[" + _TOKEN_CHARS + rb"]{8,}")
_ONLY_TOKEN_RE = re.compile(rb"[" + _TOKEN_CHARS + rb"]+")
_WINDOW_MAX = 512  # a key glued to other token characters is looked for in runs up to this long
TABLE_TTL_S = 5.0


def masked_bytes(secret: bytes) -> bytes:
    return mask(secret.decode("utf-8", "replace")).encode()


class _Table:
    """One provider's secrets as bytes → masked bytes, built from the pool's entries."""

    __slots__ = ("built", "by_secret", "entries", "lengths", "odd", "size")

    def __init__(self, entries: Mapping[Any, Any]) -> None:
        self.entries = entries
        self.size = len(entries)
        self.built = time.monotonic()
        by_secret: dict[bytes, bytes] = {}
        odd: list[tuple[bytes, bytes]] = []
        for entry in list(entries.values()):
            secret = entry.secret.encode()
            if not secret:
                continue
            masked = entry.masked.encode()
            if _ONLY_TOKEN_RE.fullmatch(secret):
                by_secret[secret] = masked
            else:
                odd.append((secret, masked))
        self.by_secret = by_secret
        self.odd = odd
        self.lengths = sorted({len(s) for s in by_secret})

    def fresh(self, entries: Mapping[Any, Any], now: float) -> bool:
        return (
            entries is self.entries and len(entries) == self.size and now - self.built < TABLE_TTL_S
        )


class Redactor:
    """Scrubs one provider's secrets out of bytes; the table is rebuilt when the pool changed
    size or got old, never on the hot path."""

    __slots__ = ("_table",)

    def __init__(self) -> None:
        self._table: _Table | None = None

    def table(self, entries: Mapping[Any, Any]) -> _Table:
        table = self._table
        if table is None or not table.fresh(entries, time.monotonic()):
            table = self._table = _Table(entries)
        return table

    def scrub(self, data: bytes, entries: Mapping[Any, Any], injected: bytes = b"") -> bytes:
        """Every secret of the pool (and `injected`, whether still in the pool or not)."""
        if not data:
            return data
        if injected and injected in data:
            data = data.replace(injected, masked_bytes(injected))
        table = self.table(entries)
        by_secret = table.by_secret
        if by_secret:
            data = _TOKEN_RE.sub(lambda m: _replace_run(m.group(), by_secret, table.lengths), data)
        for secret, masked in table.odd:
            if secret in data:
                data = data.replace(secret, masked)
        return data

    def scrub_text(self, text: str, entries: Mapping[Any, Any], injected: bytes = b"") -> str:
        if not text:
            return text
        raw = text.encode("utf-8", "surrogateescape")
        return self.scrub(raw, entries, injected).decode("utf-8", "surrogateescape")

    def scrub_headers(
        self,
        headers: Iterable[tuple[bytes, bytes]],
        entries: Mapping[Any, Any],
        injected: bytes = b"",
    ) -> list[tuple[bytes, bytes]]:
        return [(name, self.scrub(value, entries, injected)) for name, value in headers]


def _replace_run(run: bytes, by_secret: dict[bytes, bytes], lengths: list[int]) -> bytes:
    masked = by_secret.get(run)
    if masked is not None:
        return masked
    n = len(run)
    if n > _WINDOW_MAX or not lengths or lengths[0] >= n:
        return run
    # a key glued to other token characters ("key_sk-…"): every window of every key length
    for i in range(n - lengths[0] + 1):
        for length in lengths:
            if i + length > n:
                break
            masked = by_secret.get(run[i : i + length])
            if masked is not None:
                return run[:i] + masked + _replace_run(run[i + length :], by_secret, lengths)
    return run


class StreamScrubber:
    """Replaces one secret in a byte stream, also when it is split across chunks: a chunk's
    tail that could be the start of the secret waits for the next chunk, nothing else does."""

    __slots__ = ("first", "masked", "secret", "tail")

    def __init__(self, secret: bytes, masked: bytes) -> None:
        self.secret = secret
        self.masked = masked
        self.first = secret[:1]
        self.tail = b""

    def feed(self, chunk: bytes) -> bytes:
        if self.tail:
            chunk = self.tail + chunk
            self.tail = b""
        secret = self.secret
        chunk = chunk.replace(secret, self.masked)  # itself when there is nothing to mask
        n = len(chunk)
        start = n - len(secret) + 1
        i = chunk.find(self.first, start if start > 0 else 0)
        while i >= 0:
            if secret.startswith(chunk[i:]):
                self.tail = chunk[i:]
                return chunk[:i]
            i = chunk.find(self.first, i + 1)
        return chunk

    def flush(self) -> bytes:
        """What is still held back once the stream ended: a proper prefix, never the secret."""
        tail, self.tail = self.tail, b""
        return tail


_REDACTORS: dict[str, Redactor] = {}


def redactor_for(provider: str) -> Redactor:
    """One per provider, so its table follows that provider's pool."""
    redactor = _REDACTORS.get(provider)
    if redactor is None:
        redactor = _REDACTORS[provider] = Redactor()
    return redactor
