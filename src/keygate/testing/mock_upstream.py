"""Local mock of LLM provider APIs (OpenAI-, Anthropic- and Gemini-shaped) used as the upstream.

Tests script it per API key (status codes, delays, hangs, broken streams, gzip) and inspect
what the gateway actually sent; the benchmark runs it as a separate process
(``python -m keygate.testing.mock_upstream --port P``) so that upstream cost is small and
predictable. Everything is served by one catch-all aiohttp low-level handler (no router) and
stream events are pre-serialised with orjson so per-request work stays tiny.

This module is the server (lifecycle, scripting, recording, serving, command line); which answer
a request gets is ``mock_dispatch``, the ``/_mock/*`` control endpoints ``mock_control``, the
knobs and records ``mock_script``, the shared writers ``mock_wire``, and each provider's answers
``mock_openai``, ``mock_anthropic`` and ``mock_gemini``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import ipaddress
import itertools
import signal
import sys
import threading
import time
from collections import deque
from typing import Any

from aiohttp import web

from keygate.testing.mock_cache import PromptCache
from keygate.testing.mock_control import control
from keygate.testing.mock_dispatch import respond
from keygate.testing.mock_limits import STYLES, KeyLimit, tokens_of
from keygate.testing.mock_script import _DEFAULTS, Recorded, _normalize_knobs
from keygate.testing.mock_wire import _extract_key

try:  # pragma: no cover - depends on the platform
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None  # type: ignore[assignment]

__all__ = ["MockUpstream", "Recorded", "main"]

_CLIENT_MAX_SIZE = 64 * 1024 * 1024  # gateways may forward large bodies; aiohttp's default is 1 MiB
_SHUTDOWN_TIMEOUT = 0.1  # stop() must not wait for hanging handlers


def _charged(method: str, path: str) -> bool:
    """Whether a request counts against its key's limits: not model lists and lookups, nor
    token counting (providers do not charge those as generations)."""
    if method == "GET" and (path.endswith("/models") or "/models/" in path):
        return False
    return not path.endswith(("/count_tokens", ":countTokens"))


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
        self._limits: dict[str | None, KeyLimit] = {}  # None: the template every key copies
        self.refused = 0  # 429s answered because a key was over its limits
        self.prompt_cache = PromptCache()  # prefixes seen per key: usage's cached tokens
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

    def set_limit(
        self,
        key: str | None = None,
        *,
        requests: int = 0,
        tokens: int = 0,
        window_s: float = 60.0,
        style: str = "openai",
        announce: bool = True,
    ) -> None:
        """Enforce per-key limits like a provider: `key`'s own, or (None) a fresh window of
        these for every key. Over a limit the answer is 429; the budget headers of `style`
        (openai, cerebras, anthropic) are on every answer when `announce`. No limits: off."""
        if style not in STYLES:
            raise ValueError(f"style must be one of {STYLES}")
        with self._lock:
            if not requests and not tokens:
                self._limits.pop(key, None)
                if key is None:
                    self._limits.clear()
                return
            self._limits[key] = KeyLimit(requests, tokens, float(window_s), style, announce)

    def limit_of(self, key: str) -> KeyLimit | None:
        with self._lock:
            return self._limits.get(key)

    def _limit(self, key: str | None, body: bytes, text: str) -> tuple[bool, dict[str, str]]:
        """Count the request against its key's limits: whether it fits, and the headers
        announcing what is left (with `retry-after` when it does not fit)."""
        with self._lock:
            lim = self._limits.get(key)
            if lim is None:
                template = self._limits.get(None)
                if template is None:
                    return True, {}
                lim = self._limits[key] = dataclasses.replace(template, start=0.0)
            now = time.time()
            if lim.admit(tokens_of(body, text), now):
                return True, lim.headers(now)
            lim.refused += 1
            self.refused += 1
            return False, {**lim.headers(now), "retry-after": lim.retry_after(now)}

    def reset(self) -> None:
        """Forget records, behaviours, pushes and counters (inflight is live, so it stays)."""
        with self._lock:
            self._records.clear()
            self._behaviors.clear()
            self._pushes.clear()
            self._scripted = False
            self._count = 0
            self._key_counts.clear()
            self._limits.clear()
            self.refused = 0
            self.peak_inflight = self.inflight
        self.prompt_cache.reset()

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
            return await control(self, request, path)

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
            if self._limits and key is not None and _charged(request.method, path):
                fits, announced = self._limit(key, body, beh["text"])
                if not fits:  # over the key's limits: 429, as the provider would
                    beh = {**beh, "status": 429, "body": None, "headers": announced}
                elif announced:
                    beh = {**beh, "headers": {**(beh["headers"] or {}), **announced}}
            if beh["hang"]:
                await asyncio.get_running_loop().create_future()  # until the client goes away
            if beh["delay_s"]:
                await asyncio.sleep(beh["delay_s"])
            return await respond(request, path, body, beh, state, self._ids, self.prompt_cache, key)
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
    parser.add_argument("--text", default=None, help="default answer text")
    args = parser.parse_args(argv)

    async def run() -> None:
        mock = MockUpstream(host=args.host, port=args.port, record=not args.no_record)
        defaults: dict[str, Any] = {}
        if args.chunks is not None:
            defaults["chunks"] = args.chunks
        if args.chunk_interval is not None:
            defaults["chunk_interval_s"] = args.chunk_interval
        if args.text is not None:
            defaults["text"] = args.text
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
