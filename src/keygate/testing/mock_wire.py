"""What every mock answer shares: key extraction, error bodies, and the writers for whole
responses, SSE streams and mid-stream resets (so `completed` in a record is exact)."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import socket
import struct
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import orjson
from aiohttp import web
from multidict import CIMultiDict

_JSON_CT = "application/json"
_SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
}


def _extract_key(request: web.BaseRequest) -> str | None:
    """API key in provider order: Bearer, x-api-key, x-goog-api-key, ?key=."""
    headers = request.headers
    auth = headers.get("Authorization")
    if auth:
        scheme, _, token = auth.partition(" ")
        token = token.strip()
        if token and scheme.lower() == "bearer":
            return token
    for name in ("x-api-key", "x-goog-api-key"):
        v = headers.get(name)
        if v:
            return v
    qs = request.query_string
    if qs and "key=" in qs:
        return request.query.get("key")
    return None


def _split_text(text: str, n: int) -> list[str]:
    """Split text into n contiguous pieces (some may be empty) that join back to text."""
    size = len(text)
    return [text[i * size // n : (i + 1) * size // n] for i in range(n)]


def _tokens(n_bytes: int) -> int:
    """Cheap deterministic token estimate (~4 bytes/token) so usage numbers are stable."""
    return max(1, n_bytes // 4)


_OPENAI_ERR = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("invalid_request_error", "not_found"),
    429: ("requests", "rate_limit_exceeded"),
}
_ANTHROPIC_ERR = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


@lru_cache(maxsize=128)
def _error_body(status: int, anthropic: bool, message: str | None = None) -> bytes:
    msg = message or f"mock upstream error (HTTP {status})"
    if anthropic:
        etype = _ANTHROPIC_ERR.get(status) or (
            "api_error" if status >= 500 else "invalid_request_error"
        )
        return orjson.dumps({"type": "error", "error": {"type": etype, "message": msg}})
    etype, code = _OPENAI_ERR.get(status) or (
        ("server_error", None) if status >= 500 else ("invalid_request_error", None)
    )
    return orjson.dumps({"error": {"message": msg, "type": etype, "param": None, "code": code}})


def _stream_error(anthropic: bool) -> bytes:
    """The one event of a 200 stream that reports an error instead of an answer."""
    if anthropic:
        return _sse(
            "error",
            {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
        )
    return (
        b'data: {"error":{"message":"mock upstream: quota exceeded for this minute",'
        b'"type":"rate_limit_error","code":"rate_limit_exceeded"}}\n\n'
    )


def _models_body(ids: list[str]) -> bytes:
    return orjson.dumps(
        {
            "object": "list",
            "data": [{"id": m, "object": "model", "created": 0, "owned_by": "mock"} for m in ids],
        }
    )


def _sse(event: str, data: Mapping[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def _error_after(
    events: list[bytes], first_content: int, n: int | None, anthropic: bool
) -> list[bytes]:
    """The stream cut after `n` content events by an error event in the family's shape (what
    providers send when they fail after the first byte: overloaded, a quota hit)."""
    if n is None:
        return events
    if anthropic:
        err = _sse(
            "error",
            {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
        )
    else:
        err = b'data: {"error":{"message":"mock upstream failed mid-stream","type":"server_error"}}\n\n'
    return [*events[: first_content + n], err]


def _echo_event(key: str, anthropic: bool) -> bytes:
    """A content event that quotes the key (as a chatty model or provider might)."""
    text = f"key in use: {key}"
    if anthropic:
        return _sse(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": text},
            },
        )
    return (
        b'data: {"object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":'
        + orjson.dumps(text)
        + b'},"logprobs":null,"finish_reason":null}]}\n\n'
    )


async def _send(
    request: web.BaseRequest,
    status: int,
    payload: bytes,
    beh: dict[str, Any],
    state: dict[str, Any],
) -> web.StreamResponse:
    """Write a whole non-streaming response inside the handler so `completed` is exact."""
    headers = CIMultiDict({"Content-Type": _JSON_CT})
    if beh["headers"]:
        headers.update(beh["headers"])
    if beh["content_encoding"] == "gzip":
        payload = gzip.compress(payload, compresslevel=1)
        headers["Content-Encoding"] = "gzip"
    resp = web.Response(status=status, body=payload, headers=headers)
    state["status"] = status
    await resp.prepare(request)
    await resp.write_eof()
    state["completed"] = True
    return resp


async def _stream(
    request: web.BaseRequest,
    status: int,
    events: list[bytes],
    first_content: int,
    beh: dict[str, Any],
    state: dict[str, Any],
) -> web.StreamResponse:
    """Write SSE events one write() each, spaced by chunk_interval_s, optionally resetting."""
    headers = CIMultiDict(_SSE_HEADERS)
    if beh["headers"]:
        headers.update(beh["headers"])
    resp = web.StreamResponse(status=status, headers=headers)
    state["status"] = status
    await resp.prepare(request)
    interval: float = beh["chunk_interval_s"]
    reset_after = beh["reset_after_chunks"]
    echo_at = -1
    if beh["echo_key"]:
        echo_at = first_content  # before the first content event
        events = [
            *events[:echo_at],
            _echo_event(beh["echo"], first_content == 3),
            *events[echo_at:],
        ]
        first_content += 1
    # index of the last event to write before aborting (after N content chunks)
    abort_at = -1 if reset_after is None else first_content - 1 + min(reset_after, beh["chunks"])
    for i, ev in enumerate(events):
        if i and interval:
            await asyncio.sleep(interval)
        if i == echo_at:
            # the key split across two writes, apart in time: two chunks for the reader
            cut = ev.index(beh["echo"].encode()) + len(beh["echo"]) // 2
            await resp.write(ev[:cut])
            await asyncio.sleep(max(interval, 0.05))
            ev = ev[cut:]
        await resp.write(ev)
        if i == abort_at:
            # Not a client disconnect: completed and disconnected both stay False.
            # Returning the prepared response lets aiohttp treat the dead socket quietly.
            _abort(request)
            return resp
    await resp.write_eof()
    state["completed"] = True
    return resp


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(obj), status=status, content_type=_JSON_CT)


def _parse_json(body: bytes) -> dict[str, Any] | None:
    """JSON object or None: bad bodies must become a 400, never a crash."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def _abort(request: web.BaseRequest) -> None:
    """Drop the TCP connection with an RST so clients see a real mid-stream reset."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError, AttributeError, ValueError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
