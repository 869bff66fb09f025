"""What the relay does to an answer's body on its way to the client: a chain of transforms.

A transform is one stage with `feed(chunk) -> bytes` for a stream and `whole(body) -> bytes`
for an answer held whole, `close()` for what it still holds when the answer ends and `fail()`
for what the client reads when the upstream broke. The relay (`proxy.relay`) runs one loop for
every answer and hands each piece through the chain in order: translation first (it may join
what came in pieces), the key scrub last (so it sees exactly the bytes the client receives).
A new transform (a tee into a cache or a capture, say) is one class here and one line in
`chain_for`; a plain answer's chain is the key scrub alone.
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING, Protocol

from keygate.http.errors import GatewayError
from keygate.proxy.redact import StreamScrubber
from keygate.translate import Adapter
from keygate.translate.adapter import StreamTranslator

if TYPE_CHECKING:
    from keygate.proxy.cache import Pending

Headers = list[tuple[bytes, bytes]]


class Transform(Protocol):
    """One stage over the answer's body. `done`: it has seen the answer's end (no more input
    can change what the client reads); `aborts`: when the upstream breaks, the client must see
    a cut connection rather than a clean end; `incomplete`: the answer ended short of whole."""

    @property
    def done(self) -> bool: ...
    @property
    def aborts(self) -> bool: ...
    @property
    def incomplete(self) -> bool: ...

    def head(self, headers: Headers, streamed: bool) -> Headers: ...
    def feed(self, chunk: bytes) -> bytes: ...
    def whole(self, body: bytes) -> bytes: ...
    def close(self) -> bytes: ...
    def fail(self, why: str) -> bytes: ...


class KeyScrub(StreamScrubber):
    """The injected key masked in what the client receives (`StreamScrubber` holds back only
    a tail that may begin the key); a whole answer is one replace."""

    __slots__ = ()
    done = False
    aborts = True  # a plain stream that broke is left incomplete: the client sees the cut
    incomplete = False

    def head(self, headers: Headers, streamed: bool) -> Headers:
        return headers  # the relayed headers were masked as they were read

    def whole(self, body: bytes) -> bytes:
        return body.replace(self.secret, self.masked)  # the same object when nothing to mask

    def close(self) -> bytes:
        return self.flush()

    def fail(self, why: str) -> bytes:
        return b""  # what was held back is a prefix of the key: never sent


class Translation:
    """An answer in another API family than the client's: a whole answer rebuilt at once, a
    stream event by event (its state machine made on the first chunk)."""

    __slots__ = ("_translator", "adapter")

    def __init__(self, adapter: Adapter) -> None:
        self.adapter = adapter
        self._translator: StreamTranslator | None = None

    @property
    def translator(self) -> StreamTranslator:
        if self._translator is None:
            self._translator = self.adapter.stream()
        return self._translator

    @property
    def done(self) -> bool:
        return self.translator.closed

    @property
    def aborts(self) -> bool:
        return self.translator.abort

    @property
    def incomplete(self) -> bool:
        return self.translator.failed

    def head(self, headers: Headers, streamed: bool) -> Headers:
        return self.adapter.headers(headers, streamed)

    def feed(self, chunk: bytes) -> bytes:
        return self.translator.feed(chunk)

    def whole(self, body: bytes) -> bytes:
        try:
            return self.adapter.answer(body)
        except ValueError:
            raise GatewayError(
                502, "the upstream's answer could not be translated", "upstream_unreachable"
            ) from None

    def close(self) -> bytes:
        return self.translator.end()

    def fail(self, why: str) -> bytes:
        return self.translator.fail(why)


class Decompress:
    """A translated answer the upstream compressed although asked not to (gzip or zlib):
    inflated before anything reads it, each piece bounded (a small answer that inflates to
    gigabytes is refused, not held)."""

    __slots__ = ("inflater", "limit")
    done = False
    aborts = True
    incomplete = False

    def __init__(self, limit: int) -> None:
        self.inflater = zlib.decompressobj(wbits=zlib.MAX_WBITS | 32)  # gzip or zlib header
        self.limit = limit

    def head(self, headers: Headers, streamed: bool) -> Headers:
        return [h for h in headers if h[0] != b"content-encoding"]

    def feed(self, chunk: bytes) -> bytes:
        try:
            out = self.inflater.decompress(chunk, self.limit)
        except zlib.error:
            raise GatewayError(
                502, "the upstream's compressed answer is corrupt", "upstream_unreachable"
            ) from None
        if self.inflater.unconsumed_tail:
            raise GatewayError(
                502, "the upstream's answer inflates past the limit", "upstream_unreachable"
            )
        return out

    def whole(self, body: bytes) -> bytes:
        return self.feed(body) + self.close()

    def close(self) -> bytes:
        return self.inflater.flush()

    def fail(self, why: str) -> bytes:
        return b""


def decompress_for(headers: Headers, limit: int) -> Decompress | None:
    """The inflater an answer needs before it can be translated: None when it is not
    compressed; a 502 for an encoding keygate cannot read."""
    for name, value in headers:
        if name == b"content-encoding":
            encoding = value.strip().lower()
            if encoding in (b"", b"identity"):
                return None
            if encoding in (b"gzip", b"x-gzip", b"deflate"):
                return Decompress(limit)
            raise GatewayError(
                502,
                f"the upstream answered in an encoding keygate cannot translate: "
                f"{encoding.decode('latin-1')[:40]}",
                "upstream_unreachable",
            )
    return None


class Chain:
    """The transforms in order; each piece of the answer passes through all of them."""

    __slots__ = ("stages",)

    def __init__(self, stages: list[Transform]) -> None:
        self.stages = stages

    @property
    def done(self) -> bool:
        return any(t.done for t in self.stages)

    @property
    def aborts(self) -> bool:
        return all(t.aborts for t in self.stages)

    @property
    def incomplete(self) -> bool:
        return any(t.incomplete for t in self.stages)

    def head(self, headers: Headers, streamed: bool) -> Headers:
        for t in self.stages:
            headers = t.head(headers, streamed)
        return headers

    def feed(self, chunk: bytes) -> bytes:
        for t in self.stages:
            chunk = t.feed(chunk)
        return chunk

    def whole(self, body: bytes) -> bytes:
        for t in self.stages:
            body = t.whole(body)
        return body

    def close(self) -> bytes:
        """What every stage still holds once the answer ended, passed on down the chain."""
        out = b""
        for t in self.stages:
            out = (t.feed(out) if out else b"") + t.close()
        return out

    def fail(self, why: str) -> bytes:
        """What the client reads of a broken answer: the first stage's word on it, passed
        down the chain (a later stage adds none of its own)."""
        out = b""
        for i, t in enumerate(self.stages):
            out = t.fail(why) if i == 0 else (t.feed(out) + t.close() if out else b"")
        return out


class CacheTee:
    """A copy of what the client receives, for the response cache (SPEC §19): after the key
    scrub, so what is stored is exactly what was sent. It only collects; the relay calls
    `commit` once the answer ended whole, so a stream cut short or ending in an error, or an
    answer past the cache's bound, is never stored."""

    __slots__ = ("broken", "headers", "parts", "pending", "size", "streamed")
    done = False
    aborts = True  # neutral in a chain: the other stages decide
    incomplete = False

    def __init__(self, pending: Pending) -> None:
        self.pending = pending
        self.headers: Headers = []
        self.parts: list[bytes] = []
        self.size = 0
        self.streamed = False
        self.broken = False

    def head(self, headers: Headers, streamed: bool) -> Headers:
        # keygate's own headers are the request's; the length is the stored body's
        self.headers = [
            h for h in headers if h[0] != b"content-length" and not h[0].startswith(b"x-keygate-")
        ]
        self.streamed = streamed
        return headers

    def feed(self, chunk: bytes) -> bytes:
        if chunk and not self.broken:
            self.size += len(chunk)
            if self.size > self.pending.max_bytes:
                self.broken, self.parts = True, []
            else:
                self.parts.append(chunk)
        return chunk

    def whole(self, body: bytes) -> bytes:
        self.parts = [body]
        self.size = len(body)
        return body

    def close(self) -> bytes:
        return b""

    def fail(self, why: str) -> bytes:
        self.broken = True
        return b""

    def commit(self, tokens: int) -> None:
        """Store the answer: called only after it ended whole (a 200, no error)."""
        if self.broken:
            return
        body = b"".join(self.parts)
        headers = self.headers
        if self.streamed:
            if b"event: error" in body or b'data: {"error"' in body:
                return  # the stream ended in an error event
        else:
            headers = [*headers, (b"content-length", str(len(body)).encode())]
        self.pending.store(200, headers, body, tokens)


def chain_for(
    secret: bytes, masked: bytes, adapter: Adapter | None, tee: CacheTee | None = None
) -> Transform:
    """The transforms of one answer: translation when the families differ, the key scrub
    last (then the cache's copy, when the answer may be stored); a plain answer's is the key
    scrub alone (no chain to walk)."""
    scrub = KeyScrub(secret, masked)
    if adapter is None:
        return scrub if tee is None else Chain([scrub, tee])
    if tee is None:
        return Chain([Translation(adapter), scrub])
    return Chain([Translation(adapter), scrub, tee])
