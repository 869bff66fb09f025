"""Local mock of LLM provider APIs (OpenAI-, Anthropic- and Gemini-shaped) used as the upstream.

Tests script it per API key (status codes, delays, hangs, broken streams, gzip) and inspect
what the gateway actually sent; the benchmark runs it as a separate process
(``python -m keygate.testing.mock_upstream --port P``) so that upstream cost is small and
predictable. Everything is served by one catch-all aiohttp low-level handler (no router) and
stream events are pre-serialised with orjson so per-request work stays tiny.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gzip
import ipaddress
import itertools
import signal
import socket
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import orjson
from aiohttp import web
from multidict import CIMultiDict

try:  # pragma: no cover - depends on the platform
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None  # type: ignore[assignment]

__all__ = ["MockUpstream", "Recorded", "main"]

# Knob names and their defaults; a behaviour is a partial dict of these.
_DEFAULTS: dict[str, Any] = {
    "status": 200,
    "body": None,
    "headers": None,
    "delay_s": 0.0,
    "hang": False,
    "chunks": 3,
    "chunk_interval_s": 0.0,
    "reset_after_chunks": None,
    "content_encoding": None,
    "text": "Hello from mock",
    # like real providers: the key it was sent comes back in error messages, in an
    # `x-echo-key` header, in 2xx text, and in a stream event split across two writes
    "echo_key": False,
}

_CLIENT_MAX_SIZE = 64 * 1024 * 1024  # gateways may forward large bodies; aiohttp's default is 1 MiB
_SHUTDOWN_TIMEOUT = 0.1  # stop() must not wait for hanging handlers
_JSON_CT = "application/json"
_SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
}
_MODELS_BODY = orjson.dumps(
    {
        "object": "list",
        "data": [{"id": "mock-model", "object": "model", "created": 0, "owned_by": "mock"}],
    }
)
_DONE = b"data: [DONE]\n\n"


@dataclass
class Recorded:
    """One request as the mock saw it; mutated in place until the response ends."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    key: str | None
    started: float
    ended: float | None = None
    completed: bool = False
    disconnected: bool = False
    status: int = 0  # 0 until a status line was decided (stays 0 for hang)
    raw_path: str = ""  # the path as it came on the request line, still percent-encoded

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly view (body decoded leniently) for the control endpoint."""
        d = dataclasses.asdict(self)
        d["body"] = self.body.decode("utf-8", errors="replace")
        return d


def _to_bytes(body: Any) -> bytes:
    if isinstance(body, bytes):
        return body
    if isinstance(body, bytearray | memoryview):
        return bytes(body)
    if isinstance(body, str):
        return body.encode()
    return orjson.dumps(body)


def _normalize_knobs(knobs: Mapping[str, Any]) -> dict[str, Any]:
    """Validate knob names/values early so a typo fails in the test, not silently."""
    out: dict[str, Any] = {}
    for name, value in knobs.items():
        if name not in _DEFAULTS:
            raise TypeError(f"unknown mock knob {name!r}; known: {sorted(_DEFAULTS)}")
        if name == "body":
            value = None if value is None else _to_bytes(value)
        elif name == "headers":
            value = {str(k): str(v) for k, v in (value or {}).items()}
        elif name == "content_encoding":
            if value not in (None, "gzip"):
                raise ValueError("content_encoding must be 'gzip' or None")
        elif name in ("status", "chunks"):
            value = int(value)
            if value < 0 or (name == "status" and not 100 <= value <= 999):
                raise ValueError(f"bad {name}: {value}")
        elif name == "reset_after_chunks":
            value = None if value is None else max(0, int(value))
        elif name in ("delay_s", "chunk_interval_s"):
            value = max(0.0, float(value))
        elif name in ("hang", "echo_key"):
            value = bool(value)
        elif name == "text":
            value = str(value)
        out[name] = value
    return out


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


@lru_cache(maxsize=256)
def _openai_tails(text: str, chunks: int) -> tuple[bytes, tuple[bytes, ...], bytes]:
    """Cached `"choices":...}` tails of chat.completion.chunk events: role, contents, final."""
    role = (
        b'"choices":[{"index":0,"delta":{"role":"assistant","content":""},'
        b'"logprobs":null,"finish_reason":null}]}\n\n'
    )
    contents = tuple(
        b'"choices":[{"index":0,"delta":{"content":'
        + orjson.dumps(piece)
        + b'},"logprobs":null,"finish_reason":null}]}\n\n'
        for piece in _split_text(text, chunks)
    )
    final = b'"choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}]}\n\n'
    return role, contents, final


def _sse(event: str, data: Mapping[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


@lru_cache(maxsize=256)
def _anthropic_static(text: str, chunks: int) -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
    """Cached Anthropic events that do not depend on the request: (before deltas+deltas, after)."""
    head = [
        _sse(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        _sse("ping", {"type": "ping"}),
    ]
    head += [
        _sse(
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}},
        )
        for p in _split_text(text, chunks)
    ]
    tail = (
        _sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
        _sse("message_stop", {"type": "message_stop"}),
    )
    return tuple(head), tail


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


def _check_loopback(host: str) -> None:
    """Refuse to listen anywhere but loopback: this mock must never be reachable from outside."""
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise ValueError(f"MockUpstream only binds to loopback addresses, not {host!r}")


def _new_loop() -> asyncio.AbstractEventLoop:
    return uvloop.new_event_loop() if uvloop is not None else asyncio.new_event_loop()


class MockUpstream:
    """Scriptable fake LLM provider served on 127.0.0.1 (thread or caller's loop)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        record: bool = True,
        max_records: int = 20000,
    ) -> None:
        _check_loopback(host)
        self.host = host
        self.port = port
        self._record = record
        self._lock = threading.Lock()
        self._records: deque[Recorded] = deque(maxlen=max_records)
        self._count = 0
        self._key_counts: dict[str | None, int] = {}
        self._behaviors: dict[str | None, dict[str, Any]] = {}
        self._pushes: dict[str | None, deque[list[Any]]] = {}  # key -> FIFO of [times, knobs]
        self._scripted = False  # fast path: no behaviours/pushes at all
        self.inflight = 0
        self.peak_inflight = 0
        self._ids = itertools.count(1)
        self._runner: web.ServerRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def _setup(self) -> None:
        loop = asyncio.get_running_loop()

        def make_request(message, payload, protocol, writer, task):  # type: ignore[no-untyped-def]
            return web.BaseRequest(
                message, payload, protocol, writer, task, loop, client_max_size=_CLIENT_MAX_SIZE
            )

        server = web.Server(
            self._handle,
            request_factory=make_request,
            handler_cancellation=True,  # so hang/stream handlers learn about client disconnects
            access_log=None,
        )
        runner = web.ServerRunner(server, shutdown_timeout=_SHUTDOWN_TIMEOUT)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, backlog=4096, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._loop = loop
        self.port = runner.addresses[0][1]

    async def _cleanup(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def start_async(self) -> MockUpstream:
        """Serve on the caller's running loop (handy in async tests)."""
        if self._runner is not None or self._thread is not None:
            raise RuntimeError("MockUpstream already started")
        await self._setup()
        return self

    async def stop_async(self) -> None:
        await self._cleanup()
        self._loop = None

    def start(self) -> MockUpstream:
        """Serve from a daemon thread with its own loop, so sync clients/SDKs can call it."""
        if self._runner is not None or self._thread is not None:
            raise RuntimeError("MockUpstream already started")
        ready = threading.Event()
        error: list[BaseException] = []

        def run() -> None:
            loop = _new_loop()
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._setup())
            except BaseException as exc:
                error.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                pending = asyncio.all_tasks(loop)
                for task in pending:
                    task.cancel()
                if pending:
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        thread = threading.Thread(target=run, name="mock-upstream", daemon=True)
        thread.start()
        ready.wait()
        if error:
            thread.join()
            raise error[0]
        self._thread = thread
        return self

    def stop(self) -> None:
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        try:
            fut = asyncio.run_coroutine_threadsafe(self._cleanup(), loop)
            fut.result(timeout=10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            self._thread = None
            self._loop = None

    def __enter__(self) -> MockUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> MockUpstream:
        return await self.start_async()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop_async()

    # ------------------------------------------------------------------ scripting

    def set_behavior(self, key: str | None = None, **knobs: Any) -> None:
        """Persistent behaviour for `key` (None = every key); no knobs clears it.

        Layers apply as defaults < set_behavior(None) < set_behavior(key) < winning push.
        """
        norm = _normalize_knobs(knobs)
        with self._lock:
            if norm:
                self._behaviors[key] = norm
            else:
                self._behaviors.pop(key, None)
            self._scripted = bool(self._behaviors or self._pushes)

    def push(self, key: str | None = None, times: int = 1, **knobs: Any) -> None:
        """Queue a one-shot behaviour for the next `times` requests carrying `key`."""
        norm = _normalize_knobs(knobs)
        if times <= 0:
            return
        with self._lock:
            self._pushes.setdefault(key, deque()).append([int(times), norm])
            self._scripted = True

    def reset(self) -> None:
        """Forget records, behaviours, pushes and counters (inflight is live, so it stays)."""
        with self._lock:
            self._records.clear()
            self._behaviors.clear()
            self._pushes.clear()
            self._scripted = False
            self._count = 0
            self._key_counts.clear()
            self.peak_inflight = self.inflight

    def _take_push(self, key: str | None) -> dict[str, Any] | None:
        q = self._pushes.get(key)
        if not q:
            return None
        entry = q[0]
        entry[0] -= 1
        if entry[0] <= 0:
            q.popleft()
            if not q:
                del self._pushes[key]
        return entry[1]

    def _resolve(self, key: str | None) -> dict[str, Any]:
        if not self._scripted:
            return _DEFAULTS
        with self._lock:
            push = self._take_push(key) if key is not None else None
            if push is None:
                push = self._take_push(None)
            base = self._behaviors.get(None)
            keyed = self._behaviors.get(key) if key is not None else None
            self._scripted = bool(self._behaviors or self._pushes)
        eff = dict(_DEFAULTS)
        for layer in (base, keyed, push):
            if layer:
                eff.update(layer)
        return eff

    # ------------------------------------------------------------------ recording

    def records(self) -> list[Recorded]:
        """Snapshot copies, oldest first."""
        with self._lock:
            return [dataclasses.replace(r, headers=dict(r.headers)) for r in self._records]

    def count(self, key: str | None = None) -> int:
        """Requests seen since reset (all, or those carrying `key`); kept even with record=False."""
        with self._lock:
            return self._count if key is None else self._key_counts.get(key, 0)

    def reset_peak(self) -> None:
        self.peak_inflight = self.inflight

    # ------------------------------------------------------------------ serving

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        if path.startswith("/_mock/"):
            return await self._control(request, path)

        started = time.time()
        self.inflight += 1
        if self.inflight > self.peak_inflight:
            self.peak_inflight = self.inflight
        rec: Recorded | None = None
        state = {"completed": False, "status": 0}
        disconnected = False
        try:
            if request.headers.get("Expect", "").lower() == "100-continue":
                # the low-level server has no router to do this; curl waits 1 s without it
                await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                request.writer.output_size = 0
            body = await request.read()
            key = _extract_key(request)
            if self._record:
                rec = Recorded(
                    method=request.method,
                    path=path,
                    query=request.query_string,
                    headers={k.lower(): v for k, v in request.headers.items()},
                    body=body,
                    key=key,
                    started=started,
                    raw_path=request.raw_path.partition("?")[0],
                )
            with self._lock:
                self._count += 1
                self._key_counts[key] = self._key_counts.get(key, 0) + 1
                if rec is not None:
                    self._records.append(rec)
            beh = self._resolve(key)
            if beh["hang"]:
                await asyncio.get_running_loop().create_future()  # until the client goes away
            if beh["delay_s"]:
                await asyncio.sleep(beh["delay_s"])
            return await self._respond(request, path, body, beh, state)
        except (asyncio.CancelledError, ConnectionError):
            disconnected = True
            raise
        finally:
            self.inflight -= 1
            if rec is not None:
                rec.ended = time.time()
                rec.completed = state["completed"]
                rec.disconnected = disconnected
                rec.status = state["status"]

    async def _respond(
        self,
        request: web.BaseRequest,
        path: str,
        body: bytes,
        beh: dict[str, Any],
        state: dict[str, Any],
    ) -> web.StreamResponse:
        status: int = beh["status"]
        anthropic = path.endswith("/messages") or "anthropic-version" in request.headers
        if beh["echo_key"]:
            echo = _extract_key(request) or ""
            beh = {**beh, "echo": echo, "text": f"{beh['text']} (your key: {echo})"}
            beh["headers"] = {**(beh["headers"] or {}), "X-Echo-Key": f"Bearer {echo}"}
        if beh["body"] is not None:
            return await self._send(request, status, beh["body"], beh, state)
        if not 200 <= status < 300:
            message = f"Incorrect API key provided: {beh['echo']}." if beh["echo_key"] else None
            err = _error_body(status, anthropic, message)
            return await self._send(request, status, err, beh, state)

        method = request.method
        if method == "POST" and (path.endswith("/chat/completions") or path.endswith("/messages")):
            data = _parse_json(body)
            if data is None:
                err = _error_body(
                    400, anthropic, "mock upstream: request body is not a JSON object"
                )
                return await self._send(request, 400, err, beh, state)
            model = data.get("model")
            if not isinstance(model, str):
                model = "mock-model"
            stream = data.get("stream") is True
            if path.endswith("/chat/completions"):
                if stream:
                    opts = data.get("stream_options")
                    usage = isinstance(opts, dict) and opts.get("include_usage") is True
                    events = self._openai_stream(model, body, beh, usage)
                    return await self._stream(request, status, events, 1, beh, state)
                out = self._openai_completion(model, body, beh["text"])
            else:
                if stream:
                    events = self._anthropic_stream(model, body, beh)
                    return await self._stream(request, status, events, 3, beh, state)
                out = self._anthropic_message(model, body, beh["text"])
            return await self._send(request, status, out, beh, state)
        if method == "POST" and path.endswith((":generateContent", ":streamGenerateContent")):
            return await self._gemini(request, path, body, beh, state)
        if method == "GET" and path.endswith("/models"):
            return await self._send(request, status, _MODELS_BODY, beh, state)
        if method == "POST" and path.endswith("/embeddings"):
            data = _parse_json(body)
            if data is None:
                err = _error_body(400, False, "mock upstream: request body is not a JSON object")
                return await self._send(request, 400, err, beh, state)
            return await self._send(request, status, _embeddings(data, body), beh, state)
        echo = orjson.dumps(
            {
                "method": method,
                "path": path,
                "query": request.query_string,
                "headers": {k.lower(): v for k, v in request.headers.items()},
                "body_len": len(body),
            }
        )
        return await self._send(request, status, echo, beh, state)

    async def _send(
        self,
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
        self,
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
        abort_at = (
            -1 if reset_after is None else first_content - 1 + min(reset_after, beh["chunks"])
        )
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

    # ------------------------------------------------------------------ payloads

    def _openai_completion(self, model: str, body: bytes, text: str) -> bytes:
        pt, ct = _tokens(len(body)), _tokens(len(text))
        return orjson.dumps(
            {
                "id": f"chatcmpl-mock{next(self._ids)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text, "refusal": None},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct},
                "system_fingerprint": None,
            }
        )

    def _openai_stream(
        self, model: str, body: bytes, beh: dict[str, Any], include_usage: bool
    ) -> list[bytes]:
        text: str = beh["text"]
        role, contents, final = _openai_tails(text, beh["chunks"])
        head = b"".join(
            (
                b'data: {"id":"chatcmpl-mock',
                str(next(self._ids)).encode(),
                b'","object":"chat.completion.chunk","created":',
                str(int(time.time())).encode(),
                b',"model":',
                orjson.dumps(model),
                b',"system_fingerprint":null,',
            )
        )
        events = [head + role]
        events += [head + c for c in contents]
        events.append(head + final)
        if include_usage:
            pt, ct = _tokens(len(body)), _tokens(len(text))
            usage = {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct}
            events.append(head + b'"choices":[],"usage":' + orjson.dumps(usage) + b"}\n\n")
        events.append(_DONE)
        return events

    async def _gemini(
        self,
        request: web.BaseRequest,
        path: str,
        body: bytes,
        beh: dict[str, Any],
        state: dict[str, Any],
    ) -> web.StreamResponse:
        """Gemini's native generateContent, and streamGenerateContent as SSE (`alt=sse`) or as
        one JSON array, the two forms the Google SDKs and REST callers use."""
        model = path.rpartition("/models/")[2].partition(":")[0] or "mock-model"
        text: str = beh["text"]
        pt, ct = _tokens(len(body)), _tokens(len(text))

        def chunk(piece: str, last: bool) -> dict[str, Any]:
            candidate: dict[str, Any] = {
                "content": {"parts": [{"text": piece}], "role": "model"},
                "index": 0,
            }
            out: dict[str, Any] = {"candidates": [candidate], "modelVersion": model}
            if last:
                candidate["finishReason"] = "STOP"
                out["usageMetadata"] = {
                    "promptTokenCount": pt,
                    "candidatesTokenCount": ct,
                    "totalTokenCount": pt + ct,
                }
            return out

        if path.endswith(":generateContent"):
            return await self._send(
                request, beh["status"], orjson.dumps(chunk(text, True)), beh, state
            )
        pieces = _split_text(text, beh["chunks"])
        docs = [chunk(piece, i == len(pieces) - 1) for i, piece in enumerate(pieces)]
        if request.query.get("alt") != "sse":
            return await self._send(request, beh["status"], orjson.dumps(docs), beh, state)
        events = [b"data: " + orjson.dumps(doc) + b"\r\n\r\n" for doc in docs]
        return await self._stream(request, beh["status"], events, 0, beh, state)

    def _anthropic_message(self, model: str, body: bytes, text: str) -> bytes:
        return orjson.dumps(
            {
                "id": f"msg_mock{next(self._ids)}",
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": _tokens(len(body)), "output_tokens": _tokens(len(text))},
            }
        )

    def _anthropic_stream(self, model: str, body: bytes, beh: dict[str, Any]) -> list[bytes]:
        text: str = beh["text"]
        head, tail = _anthropic_static(text, beh["chunks"])
        start = _sse(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": f"msg_mock{next(self._ids)}",
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": _tokens(len(body)), "output_tokens": 1},
                },
            },
        )
        delta = _sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": _tokens(len(text))},
            },
        )
        return [start, *head, tail[0], delta, tail[1]]

    # ------------------------------------------------------------------ control

    async def _control(self, request: web.BaseRequest, path: str) -> web.Response:
        """/_mock/* endpoints so out-of-process users (the benchmark) can script the mock."""
        method = request.method
        if path == "/_mock/requests" and method == "GET":
            return _json([r.to_dict() for r in self.records()])
        if path == "/_mock/stats" and method == "GET":
            return _json(
                {
                    "inflight": self.inflight,
                    "peak_inflight": self.peak_inflight,
                    "count": self.count(),
                }
            )
        if path == "/_mock/reset" and method == "POST":
            self.reset()
            return _json({"ok": True})
        if path == "/_mock/behavior" and method == "POST":
            data = _parse_json(await request.read())
            if data is None:
                return _json({"error": "body must be a JSON object"}, 400)
            key = data.pop("key", None)
            try:
                if "times" in data:
                    self.push(key, times=int(data.pop("times")), **data)
                else:
                    self.set_behavior(key, **data)
            except (TypeError, ValueError) as exc:
                return _json({"error": str(exc)}, 400)
            return _json({"ok": True})
        return _json({"error": f"unknown control endpoint {method} {path}"}, 404)


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(obj), status=status, content_type=_JSON_CT)


def _parse_json(body: bytes) -> dict[str, Any] | None:
    """JSON object or None: bad bodies must become a 400, never a crash."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def _embeddings(data: dict[str, Any], body: bytes) -> bytes:
    inp = data.get("input")
    n = len(inp) if isinstance(inp, list) and inp and not isinstance(inp[0], int) else 1
    model = data.get("model") if isinstance(data.get("model"), str) else "mock-model"
    pt = _tokens(len(body))
    return orjson.dumps(
        {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": [0.0, 0.1, 0.2, 0.3]}
                for i in range(n)
            ],
            "model": model,
            "usage": {"prompt_tokens": pt, "total_tokens": pt},
        }
    )


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


# ---------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    """Run the mock as a standalone process until SIGINT/SIGTERM (used by the benchmark)."""
    parser = argparse.ArgumentParser(prog="python -m keygate.testing.mock_upstream")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--no-record", action="store_true", help="keep only counters")
    parser.add_argument("--chunks", type=int, default=None, help="default stream content chunks")
    parser.add_argument(
        "--chunk-interval", type=float, default=None, help="default seconds between stream events"
    )
    args = parser.parse_args(argv)

    async def run() -> None:
        mock = MockUpstream(host=args.host, port=args.port, record=not args.no_record)
        defaults: dict[str, Any] = {}
        if args.chunks is not None:
            defaults["chunks"] = args.chunks
        if args.chunk_interval is not None:
            defaults["chunk_interval_s"] = args.chunk_interval
        if defaults:
            mock.set_behavior(None, **defaults)
        await mock.start_async()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        print(f"mock upstream listening on {mock.url}", flush=True)
        try:
            await stop.wait()
        finally:
            await mock.stop_async()

    with asyncio.Runner(loop_factory=_new_loop) as runner:
        runner.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
