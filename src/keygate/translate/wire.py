"""The pieces every stream translation is made of.

A translated stream is a chain: the SSE parser → one or two state machines (`Stage`s, each
turning one family's events into another's) → a `Writer` that serialises the client family's
events. Events travel as (name, dict); `done()` says the upstream finished the answer, `fail()`
that it broke. Each stage keeps only what the next event needs (indices, ids, counters).
"""

from __future__ import annotations

import secrets
import time
from typing import Any, Protocol

import orjson

from keygate.translate.errors import anthropic_error, openai_error

Doc = dict[str, Any]


class Sink(Protocol):
    def event(self, name: str | None, data: Doc) -> None: ...
    def done(self) -> None: ...
    def fail(self, message: str) -> None: ...


class Stage:
    """A state machine between two families; `out` is the next link of the chain."""

    __slots__ = ("failed", "finished", "out")

    def __init__(self, out: Sink) -> None:
        self.out = out
        self.finished = False  # the upstream's answer ended as its protocol says it must
        self.failed = False

    def event(self, name: str | None, data: Doc) -> None:
        raise NotImplementedError

    def done(self) -> None:
        """The upstream's stream ended (EOF or its own terminator seen)."""
        raise NotImplementedError

    def fail(self, message: str) -> None:
        if not self.failed:
            self.failed = True
            self.out.fail(message)


class Writer:
    """Serialises the client family's events into `buf`; `abort` asks the relay to leave the
    response incomplete (how an OpenAI SDK learns that a stream broke)."""

    __slots__ = ("abort", "buf", "closed", "failed")

    def __init__(self) -> None:
        self.buf: list[bytes] = []
        self.abort = False
        self.closed = False
        self.failed = False

    def take(self) -> bytes:
        buf = self.buf
        if not buf:
            return b""
        out = buf[0] if len(buf) == 1 else b"".join(buf)
        buf.clear()
        return out


class OpenAIWriter(Writer):
    """`data: {chunk}` lines and the closing `data: [DONE]`."""

    __slots__ = ()

    def event(self, name: str | None, data: Doc) -> None:
        self.buf.append(b"data: " + orjson.dumps(data) + b"\n\n")

    def done(self) -> None:
        if not self.closed:
            self.closed = True
            self.buf.append(b"data: [DONE]\n\n")

    def fail(self, message: str) -> None:
        # the SDK raises APIError on a chunk with `error`; the missing [DONE] and the cut
        # connection tell every other client
        if not self.closed:
            self.closed = self.failed = self.abort = True
            body = openai_error(502, message, "upstream_stream_error")
            self.buf.append(b"data: " + body + b"\n\n")


class NamedWriter(Writer):
    """`event: name` + `data: {...}`: Anthropic's and the Responses API's framing."""

    __slots__ = ()

    def event(self, name: str | None, data: Doc) -> None:
        self.buf.append(
            b"event: " + (name or "").encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"
        )

    def done(self) -> None:
        self.closed = True


class AnthropicWriter(NamedWriter):
    __slots__ = ()

    def fail(self, message: str) -> None:
        # the Anthropic SDK raises on `event: error`; the stream then ends cleanly, as the
        # Anthropic API ends it
        if not self.closed:
            self.closed = self.failed = True
            body = anthropic_error(500, message)
            self.buf.append(b"event: error\ndata: " + body + b"\n\n")


class ResponsesWriter(NamedWriter):
    """The Responses stage writes `response.failed` itself; the cut connection follows."""

    __slots__ = ()

    def fail(self, message: str) -> None:
        self.closed = self.failed = self.abort = True


def call_key(call: Doc, position: int, latest: dict[int, tuple[Any, Any]]) -> Any:
    """Which tool call a Chat `tool_calls` delta continues: the one at its `index` (its place
    in the list when a provider leaves the index out), unless it brings another id than that
    call's: then it begins a new call (providers that send each call whole at index 0).
    `latest` maps an index to (the key of its newest call, that call's id)."""
    index = call.get("index")
    if not isinstance(index, int):
        index = position
    cid = call.get("id") or None
    seen = latest.get(index)
    if seen is None:
        latest[index] = (index, cid)
        return index
    key, known = seen
    if cid and known and cid != known:
        key = (index, cid)
        latest[index] = (key, cid)
    elif cid and not known:
        latest[index] = (key, cid)
    return key


def new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


def now_s() -> int:
    return int(time.time())
