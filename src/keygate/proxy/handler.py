"""The request path, top to bottom:

auth → route → body → admission → pick key → forward → classify → (retry?) → stream back → release

One call of `handle` serves one client request. Every try holds a slot and a key only while it
talks to the upstream; both go back on every exit path (success, error, retry, cancel). The
client's disconnect cancels this task, which closes the upstream connection at once.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import aiohttp

from keygate.control.base import Event, Rejected
from keygate.gateway import Gateway, ProviderRuntime
from keygate.observe import RequestRecord, access_log
from keygate.proxy.auth import password_ok, presented_credential, refused, split_key_param
from keygate.proxy.classify import classify
from keygate.proxy.errors import GatewayError, error_body, error_dialect, retry_after_headers
from keygate.proxy.forward import (
    EXPOSE_HEADERS,
    UpstreamTimeout,
    UpstreamUnreachable,
    lower_headers,
    open_upstream,
    read_limited,
    request_headers,
    response_headers,
    scan_usage,
)
from keygate.proxy.redact import StreamScrubber, redactor_for
from keygate.proxy.route import (
    apply_model,
    find_model,
    resolve_dots,
    split_prefix,
    upstream_path,
)
from keygate.proxy.watchdog import Watchdog

ERROR_BODY_LIMIT = 1 << 20
WHOLE_BODY_LIMIT = 1 << 20  # a 2xx body up to this length is read whole before it is relayed
JSON_HEADERS = [
    (b"content-type", b"application/json"),
    (b"access-control-allow-origin", b"*"),
    EXPOSE_HEADERS,
]
_NO_RETRY = (b"x-should-retry", b"false")


class ClientGone(Exception):
    """The client disconnected; nothing more to send."""


async def read_body(receive: Any, headers: list[tuple[bytes, bytes]], limit: int) -> bytes:
    for name, value in headers:
        if name == b"content-length":
            try:
                declared = int(value)
            except ValueError:
                raise GatewayError(400, "invalid Content-Length header") from None
            if declared > limit:
                raise GatewayError(
                    413,
                    f"request body of {declared} bytes exceeds the limit of {limit} bytes",
                    "request_too_large",
                )
            break
    message = await receive()
    if message["type"] == "http.disconnect":
        raise ClientGone
    body: bytes = message.get("body", b"")
    size = len(body)
    if size > limit:  # a chunked body may arrive whole in the first message
        raise GatewayError(
            413, f"request body exceeds the limit of {limit} bytes", "request_too_large"
        )
    if not message.get("more_body"):
        return body
    parts = [body]
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise GatewayError(
                413, f"request body exceeds the limit of {limit} bytes", "request_too_large"
            )
        parts.append(chunk)
        if not message.get("more_body"):
            return b"".join(parts)


async def send_error(send: Any, err: GatewayError, anthropic: bool | str) -> None:
    headers = JSON_HEADERS + err.headers
    if not err.retry and not any(h[0] == b"x-should-retry" for h in err.headers):
        headers.append(_NO_RETRY)  # the SDKs would otherwise retry what cannot change
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send(
        {
            "type": "http.response.body",
            "body": error_body(err.status, err.message, err.code, anthropic),
        }
    )


async def send_preflight(send: Any, headers: list[tuple[bytes, bytes]]) -> None:
    asked = next((v for n, v in headers if n == b"access-control-request-headers"), b"*")
    await send(
        {
            "type": "http.response.start",
            "status": 204,
            "headers": [
                (b"access-control-allow-origin", b"*"),
                (b"access-control-allow-methods", b"GET, POST, PUT, PATCH, DELETE, OPTIONS"),
                (b"access-control-allow-headers", asked),
                (b"access-control-max-age", b"86400"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": b""})


WATCH_AFTER_S = 0.05  # quick exchanges finish before a disconnect watcher is worth a task


class Exchange:
    """One request's state: what the log line and counters need, and the two things that can
    cut it short (the client leaving, the upstream going silent)."""

    __slots__ = (
        "disconnected",
        "dog",
        "entry",
        "error",
        "finishing",
        "model",
        "receive",
        "retries",
        "status",
        "task",
        "upstream_status",
        "usage",
        "watcher",
    )

    def __init__(self) -> None:
        self.finishing = False  # the final send has begun
        self.disconnected = False
        self.status = 0
        self.upstream_status = 0
        self.retries = 0
        self.entry: Any = None
        self.error = ""
        self.model = ""
        self.usage = [0, 0]
        self.task: asyncio.Task[Any] | None = None
        self.receive: Any = None
        self.dog: Watchdog | None = None
        self.watcher: asyncio.Task[Any] | None = None

    def arm(self, receive: Any) -> Watchdog:
        """Set up the watchdog, and a disconnect watcher that starts only if the exchange
        lasts: most answers are back before a watcher task would have paid for itself."""
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        self.task = task
        self.receive = receive
        self.dog = Watchdog(loop, task, wake=self.watch, wake_after_s=WATCH_AFTER_S)
        return self.dog

    def watch(self) -> None:
        """Cancel the request's task the moment the client goes away."""
        if self.watcher is None and self.task is not None:
            self.watcher = asyncio.ensure_future(self._watch())

    async def _watch(self) -> None:
        message = await self.receive()
        # The server also reports a disconnect once the response is complete: ignored from
        # the final send on, so releases after it are never cut short.
        if message["type"] == "http.disconnect" and not self.finishing:
            self.disconnected = True
            assert self.task is not None
            self.task.cancel()

    def disarm(self) -> None:
        if self.watcher is not None and not self.watcher.done():
            self.watcher.cancel()
        if self.dog is not None:
            self.dog.close()


async def handle(gw: Gateway, scope: dict[str, Any], receive: Any, send: Any) -> None:
    started = time.perf_counter()
    raw_path: bytes | None = scope.get("raw_path")
    # forward the path as the client encoded it (`%2F`, `%20` must not be decoded on the way)
    path: str = raw_path.decode("latin-1") if raw_path else scope["path"]
    method: str = scope["method"]
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    name, rest = split_prefix(path, gw.default_provider)
    rt = gw.providers.get(name)
    anthropic = rt.anthropic if rt is not None else False
    ex = Exchange()
    try:
        if method == "OPTIONS":
            ex.status = 204
            await send_preflight(send, headers)
            return
        # one decoding of the query decides both the credential and what goes upstream
        query_key, query = split_key_param(scope["query_string"])
        if gw.passwords and not password_ok(presented_credential(headers, query_key), gw.passwords):
            raise refused(gw, scope, query_key)
        if rt is None:
            raise GatewayError(404, f"no such provider or route: /{name}", "not_found")
        cfg = rt.cfg
        try:
            rest = resolve_dots(rest)
        except ValueError:
            raise GatewayError(
                400, f"path leaves the base of provider '{name}'", "invalid_path"
            ) from None
        up_path, native = upstream_path(cfg, rest, headers)
        body = await read_body(receive, headers, cfg.max_body_bytes)
        if body and method == "POST":
            body = apply_model(body, cfg, up_path)
            ex.model = find_model(body)
        if not rt.pool.entries:
            raise GatewayError(503, f"no API key configured for provider '{name}'", "no_keys")
        ex.arm(receive)
        url = cfg.base_url + up_path + ("?" + query.decode("latin-1") if query else "")
        await forward(gw, rt, ex, send, method, url, headers, body or None, native)
    except GatewayError as err:
        ex.status = err.status
        ex.error = err.message
        ex.finishing = True
        dialect = anthropic or error_dialect(rt.cfg if rt is not None else None, rest, headers)
        await send_error(send, err, dialect)
    except ClientGone:
        ex.status = 499
        ex.error = "client disconnected"
    except asyncio.CancelledError:
        if not ex.disconnected:
            raise
        current = asyncio.current_task()
        if current is not None:
            current.uncancel()
        ex.status = ex.status or 499
        ex.error = "client disconnected"
    finally:
        ex.disarm()
        _account(gw, rt, ex, name, method, path, started, scope)


async def forward(
    gw: Gateway,
    rt: ProviderRuntime,
    ex: Exchange,
    send: Any,
    method: str,
    url: str,
    client_headers: list[tuple[bytes, bytes]],
    body: bytes | None,
    native: bool,
) -> None:
    """Tries until one answer can be relayed; sleeps between tries hold neither slot nor key."""
    cfg = rt.cfg
    pool = rt.pool
    session = gw.session
    assert session is not None
    tried: list[int] = []
    retries_used = key_retries = 0
    # the last upstream error answer, and the key it was given
    last: tuple[int, list[tuple[bytes, bytes]], bytes, bytes] | None = None
    last_error: GatewayError | None = None  # or keygate's own 502/504
    while True:
        try:
            slot = await rt.admission.acquire()
        except Rejected as rej:
            raise GatewayError(
                429,
                f"provider '{cfg.name}' is busy ({rej.reason}); retry later",
                "rate_limited",
                retry_after_headers(rej.retry_after_s),
            ) from None
        delay = 0.0
        held = None
        try:  # from here the slot goes back on every path, cancellation included
            if getattr(slot, "queued", True):
                # It waited: if its client left meanwhile, find out before anything goes upstream.
                ex.watch()
                await asyncio.sleep(0)
            # one pick: a key not tried yet, else one we tried, else how long until one is usable
            pick = await pool.acquire(tried)
            held = pick.entry
            if held is None:
                break
            entry = ex.entry = held
            try:
                resp = await open_upstream(
                    session,
                    method,
                    url,
                    request_headers(client_headers, cfg.key_style, entry.secret, native),
                    body,
                    rt.timeout,
                    ex.dog,
                    cfg.timeout_first_byte_s,
                )
            except (UpstreamTimeout, UpstreamUnreachable) as exc:
                timed_out = isinstance(exc, UpstreamTimeout)
                last, last_error = (
                    None,
                    GatewayError(
                        504 if timed_out else 502,
                        f"upstream {cfg.name}: {exc}",
                        "upstream_timeout" if timed_out else "upstream_unreachable",
                    ),
                )
                event, until, retry, key_fault, message = (
                    Event.PROVIDER_ERROR,
                    None,
                    True,
                    False,
                    str(exc),
                )
                ex.upstream_status = 0
                entry.err_5xx += 1
            else:
                ex.upstream_status = resp.status
                if resp.status < 400:
                    held = None  # relay owns the key from here
                    await relay(rt, ex, send, resp, entry, method == "HEAD")
                    return
                ex.dog.stop()
                try:
                    err_body = await read_limited(resp, ERROR_BODY_LIMIT, cfg.timeout_idle_s)
                finally:
                    resp.close()
                verdict = classify(resp.status, lower_headers(resp), err_body)
                event, until, retry, key_fault, message = (
                    verdict.event,
                    verdict.until,
                    verdict.retry,
                    verdict.key_fault,
                    verdict.message,
                )
                last = (resp.status, response_headers(resp), err_body, entry.secret.encode())
                last_error = None
                if resp.status < 500:
                    entry.err_4xx += 1
                else:
                    entry.err_5xx += 1
            held = None
            pause = await pool.release(entry, event, until, message)
            if pause:
                rt.admission.pause_until(pause)
            if not retry or cfg.retries == 0:
                break
            now = time.time()
            if key_fault and event is not Event.RATE_LIMITED:
                # A dead key (invalid, out of quota): swap it for another at once. These swaps
                # have their own small allowance so a few dead keys never fail a client.
                if key_retries >= cfg.retries + 2:
                    break
                key_retries += 1
            else:
                # 429, 5xx, 529, timeouts, refused connections: the retry budget.
                if retries_used >= cfg.retries:
                    break
                retries_used += 1
                if key_fault and await pool.ready_in([*tried, entry.id]) == 0.0:
                    delay = 0.0  # rate-limited key: another key is ready now
                else:
                    backoff = _backoff(cfg.backoff_base_s, retries_used - 1)
                    # a hint is a wall-clock moment: wake just after it, never just before
                    delay = max(backoff, (until - now + 0.02) if until else 0.0)
            if delay > cfg.retry_after_max_s:
                break
            tried.append(entry.id)
            ex.retries += 1
        finally:
            ex.dog.stop()
            if held is not None:
                await pool.release(held, Event.CANCELLED)
            await slot.release()
        if delay > 0:
            await asyncio.sleep(delay)

    # Out of tries, or no key to try with.
    retried = ex.retries > 0
    if last is not None:
        status, resp_headers, err_body, injected = last
        # cold path: every key of the pool, not only the one this try injected
        redactor = redactor_for(cfg.name)
        err_body = redactor.scrub(err_body, pool.entries, injected)
        resp_headers = redactor.scrub_headers(resp_headers, pool.entries, injected)
        if retried or status in (401, 403):
            resp_headers = [h for h in resp_headers if h[0] != b"x-should-retry"] + [_NO_RETRY]
        # the body may have been cut at ERROR_BODY_LIMIT or by a broken upstream: say what we send
        resp_headers = [h for h in resp_headers if h[0] != b"content-length"] + [
            (b"content-length", str(len(err_body)).encode())
        ]
        ex.status = status
        ex.error = f"upstream answered {status}"
        await send({"type": "http.response.start", "status": status, "headers": resp_headers})
        ex.finishing = True
        await send({"type": "http.response.body", "body": err_body})
        return
    if last_error is not None:
        if retried:
            last_error.retry = False  # keygate already retried on another try
        raise last_error
    ready = pick.wait
    if ready is None:
        raise GatewayError(
            503,
            f"no usable API key for provider '{cfg.name}' (all invalid, exhausted or disabled)",
            "no_usable_key",
        )
    raise GatewayError(
        429,
        f"every key of provider '{cfg.name}' is cooling down; retry in {ready:.1f}s",
        "keys_cooling",
        retry_after_headers(ready),
    )


def _backoff(base: float, n: int) -> float:
    """Exponential with jitter: base·2ⁿ scaled by a random factor in [0.5, 1.0]."""
    return base * (2**n) * (0.5 + random.random() / 2)


async def relay(
    rt: ProviderRuntime,
    ex: Exchange,
    send: Any,
    resp: aiohttp.ClientResponse,
    entry: Any,
    head: bool,
) -> None:
    """Relay the upstream answer with the injected key masked; release the key after the last
    byte (the caller releases the slot). A body of known, modest length is read whole first,
    so its Content-Length can follow a replacement; anything else streams as it arrives."""
    pool = rt.pool
    event = Event.CANCELLED
    dog = ex.dog
    assert dog is not None
    idle = rt.cfg.timeout_idle_s
    secret = entry.secret.encode()
    masked = entry.masked.encode()
    headers = response_headers(resp, secret, masked)
    length = resp.content_length
    try:
        dog.watch(idle)
        if length is not None and 0 < length <= WHOLE_BODY_LIMIT and not head:
            event = await _relay_whole(ex, send, resp, headers, secret, masked, idle)
            return
        if length is not None and not head:
            # too big to hold: a replacement would change the length, so stream it unframed
            headers = [h for h in headers if h[0] != b"content-length"]
        event = await _relay_stream(ex, send, resp, headers, StreamScrubber(secret, masked), idle)
    except GatewayError:
        event = Event.PROVIDER_ERROR
        raise
    finally:
        dog.stop()
        if event is Event.OK:
            resp.release()
        else:
            resp.close()
        await pool.release(entry, event)
        if event is Event.OK:
            entry.ok += 1
        elif event is Event.PROVIDER_ERROR:
            entry.err_5xx += 1
        entry.tokens_in += ex.usage[0]
        entry.tokens_out += ex.usage[1]


async def _relay_whole(
    ex: Exchange,
    send: Any,
    resp: aiohttp.ClientResponse,
    headers: list[tuple[bytes, bytes]],
    secret: bytes,
    masked: bytes,
    idle: float,
) -> Event:
    """Nothing is sent before the whole body is here: a broken upstream becomes a clean 502."""
    dog = ex.dog
    assert dog is not None
    content = resp.content
    chunks: list[bytes] = []
    try:
        while True:
            chunk = await content.readany()
            if not chunk:
                break
            chunks.append(chunk)
            dog.touch()
            if content.at_eof():
                break
    except asyncio.CancelledError:
        if not dog.fired or ex.disconnected:
            raise
        assert ex.task is not None
        ex.task.uncancel()
        raise GatewayError(
            504, f"upstream went silent for {idle:g}s mid-response", "upstream_timeout"
        ) from None
    except (aiohttp.ClientError, OSError) as exc:
        raise GatewayError(
            502, f"upstream broke mid-response: {type(exc).__name__}", "upstream_unreachable"
        ) from None
    dog.stop()
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    scan_usage(body, ex.usage)
    if secret in body:
        body = body.replace(secret, masked)
        headers = [h for h in headers if h[0] != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": resp.status, "headers": headers})
    ex.status = resp.status
    ex.finishing = True
    await send({"type": "http.response.body", "body": body})
    return Event.OK


async def _relay_stream(
    ex: Exchange,
    send: Any,
    resp: aiohttp.ClientResponse,
    headers: list[tuple[bytes, bytes]],
    scrubber: StreamScrubber,
    idle: float,
) -> Event:
    """Chunks go on as they arrive; only a tail that may begin the key waits for the next."""
    dog = ex.dog
    assert dog is not None
    await send({"type": "http.response.start", "status": resp.status, "headers": headers})
    ex.status = resp.status
    content = resp.content
    usage = ex.usage
    try:
        while True:
            chunk = await content.readany()
            if not chunk:
                break
            dog.pause()  # a slow client is not an idle upstream
            scan_usage(chunk, usage)
            chunk = scrubber.feed(chunk)
            if content.at_eof():
                ex.finishing = True
                await send({"type": "http.response.body", "body": chunk + scrubber.flush()})
                return Event.OK
            if chunk:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            dog.touch()
    except asyncio.CancelledError:
        if not dog.fired or ex.disconnected:
            raise
        assert ex.task is not None
        ex.task.uncancel()
        ex.error = f"upstream went silent for {idle:g}s mid-response"
        return Event.PROVIDER_ERROR  # the response is left incomplete: the server closes it
    except (aiohttp.ClientError, OSError) as exc:
        ex.error = f"upstream broke mid-response: {type(exc).__name__}"
        return Event.PROVIDER_ERROR
    ex.finishing = True
    await send({"type": "http.response.body", "body": scrubber.flush()})
    return Event.OK


def _account(
    gw: Gateway,
    rt: ProviderRuntime | None,
    ex: Exchange,
    name: str,
    method: str,
    path: str,
    started: float,
    scope: dict[str, Any],
) -> None:
    latency_ms = (time.perf_counter() - started) * 1000
    entry = ex.entry
    now = time.time()
    if rt is not None and ex.status != 204:
        stats = rt.stats
        stats.record(ex.status, latency_ms, now)
        stats.tokens_in += ex.usage[0]
        stats.tokens_out += ex.usage[1]
    key_id = entry.id if entry is not None else None
    masked = entry.masked if entry is not None else ""
    if ex.error and rt is not None:
        # what goes to the log and the ring never carries a key, whoever wrote the text
        ex.error = redactor_for(name).scrub_text(
            ex.error, rt.pool.entries, entry.secret.encode() if entry is not None else b""
        )
    gw.recent.append(
        RequestRecord(
            now,
            name if rt is not None else "",
            method,
            path,
            ex.model,
            key_id,
            masked,
            ex.status,
            round(latency_ms, 2),
            ex.retries,
            ex.error,
        )
    )
    if access_log.enabled:
        client = scope.get("client")
        access_log.request(
            now,
            name if rt is not None else "",
            method,
            path,
            key_id,
            masked,
            ex.status,
            ex.upstream_status,
            latency_ms,
            ex.retries,
            ex.error,
            client[0] if client else "",
        )
