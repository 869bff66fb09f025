"""The request path, top to bottom:

auth → route → body → admission → pick key → forward → classify → (retry?) → stream back → release

One call of `handle` serves one client request. Every try holds a slot and a key only while it
talks to the upstream; both go back on every exit path (success, error, retry, cancel). The
client's disconnect cancels this task, which closes the upstream connection at once. What is
particular to an API family (key header, paths, error shape, usage, reset hints) is the
provider's dialect's (`keygate.dialects`).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from typing import Any

import aiohttp

from keygate.asgi import BadContentLength, BodyTooLarge, ClientGone, read_body, respond
from keygate.classify import Verdict, classify
from keygate.control.base import Event, Rejected
from keygate.control.quota import Ticket, quota_delay
from keygate.dialects import Dialect
from keygate.dialects.openai import OPENAI
from keygate.gateway import Gateway
from keygate.observe import RequestRecord, access_log
from keygate.proxy import clients
from keygate.proxy.auth import split_key_param
from keygate.proxy.errors import GatewayError, retry_after_headers
from keygate.proxy.exchange import Exchange
from keygate.proxy.firstevent import error_status, hold_first, opens_with_error
from keygate.proxy.forward import (
    EXPOSE_HEADERS,
    UpstreamTimeout,
    UpstreamUnreachable,
    lower_headers,
    open_upstream,
    read_answer,
    read_limited,
    request_headers,
    response_headers,
)
from keygate.proxy.models import MERGED, serve_model_list
from keygate.proxy.redact import StreamScrubber, redactor_for
from keygate.proxy.route import apply_model, find_model, resolve_dots, split_prefix
from keygate.proxy.translated import (
    answer_locally,
    relay_translated,
    translate_doc,
    translate_request,
)
from keygate.proxy.unified import Failure, Plan, plan_route
from keygate.proxy.watchdog import absorb_cancel
from keygate.runtime import ProviderRuntime
from keygate.translate import adapter_for

ERROR_BODY_LIMIT = 1 << 20
WHOLE_BODY_LIMIT = 1 << 20  # a 2xx body up to this length is read whole before it is relayed
JSON_HEADERS = [
    (b"content-type", b"application/json"),
    (b"access-control-allow-origin", b"*"),
    EXPOSE_HEADERS,
]
_NO_RETRY = (b"x-should-retry", b"false")
sleep = asyncio.sleep  # the wait between tries (a test puts a fake clock's here)


def body_refused(exc: BadContentLength | BodyTooLarge, limit: int) -> GatewayError:
    """A refusal of `asgi.read_body` as the client's error."""
    if isinstance(exc, BadContentLength):
        return GatewayError(400, "invalid Content-Length header")
    size = f" of {exc.declared} bytes" if exc.declared is not None else ""
    return GatewayError(
        413, f"request body{size} exceeds the limit of {limit} bytes", "request_too_large"
    )


def error_dialect(
    rt: ProviderRuntime | None, rest: str, headers: Sequence[tuple[bytes, bytes]]
) -> Dialect:
    """The family whose error shape the client reads (for Gemini it depends on the path).
    Decided only when there is an error to send, so the request path pays nothing for it."""
    if rt is None:
        return OPENAI
    adapter = adapter_for(None, rt.dialect, rest, rt.cfg.name)
    return adapter.client if adapter is not None else rt.dialect.route(rest, headers)[1]


async def send_error(send: Any, err: GatewayError, dialect: Dialect) -> None:
    headers = JSON_HEADERS + err.headers
    if not err.retry and not any(h[0] == b"x-should-retry" for h in err.headers):
        headers.append(_NO_RETRY)  # the SDKs would otherwise retry what cannot change
    await respond(send, err.status, headers, dialect.error_body(err.status, err.message, err.code))


async def send_preflight(send: Any, headers: list[tuple[bytes, bytes]]) -> None:
    asked = next((v for n, v in headers if n == b"access-control-request-headers"), b"*")
    await respond(
        send,
        204,
        [
            (b"access-control-allow-origin", b"*"),
            (b"access-control-allow-methods", b"GET, POST, PUT, PATCH, DELETE, OPTIONS"),
            (b"access-control-allow-headers", asked),
            (b"access-control-max-age", b"86400"),
        ],
    )


async def handle(gw: Gateway, scope: dict[str, Any], receive: Any, send: Any) -> None:
    started = time.perf_counter()
    raw_path: bytes | None = scope.get("raw_path")
    # forward the path as the client encoded it (`%2F`, `%20` must not be decoded on the way)
    path: str = raw_path.decode("latin-1") if raw_path else scope["path"]
    method: str = scope["method"]
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    name, rest = split_prefix(path, gw.default_provider)
    rt = gw.providers.get(name)
    ex = Exchange()
    try:
        if method == "OPTIONS":
            ex.status = 204
            await send_preflight(send, headers)
            return
        # auth: one decoding of the query decides both the credential and what goes upstream
        query_key, query = split_key_param(scope["query_string"])
        ex.client = clients.authenticate(gw, scope, query_key)  # None: master password / open
        # route
        if path == "/v1/models" and method == "GET":
            ex.serve(MERGED, "")
            await serve_model_list(gw, send, ex)
            return
        if rt is None:
            raise GatewayError(404, f"no such provider or route: /{name}", "not_found")
        cfg = rt.cfg
        try:
            rest = resolve_dots(rest)
        except ValueError:
            raise GatewayError(
                400, f"path leaves the base of provider '{name}'", "invalid_path"
            ) from None
        up_path, ex.wire = rt.dialect.route(rest, headers)
        # body
        limit = cfg.max_body_bytes
        try:
            body = await read_body(receive, headers, limit)
        except (BadContentLength, BodyTooLarge) as exc:
            raise body_refused(exc, limit) from None
        qs = "?" + query.decode("latin-1") if query else ""
        doc = None  # the body parsed, when a client's lists or limits must read it
        if method == "POST":
            if body and path.startswith("/v1/"):
                if ex.client is not None and ex.client.checks_body:
                    doc = clients.read_strictly(body, headers)
                    if doc is not None and ex.client.token_limited:
                        body = clients.ask_for_usage(body, doc, path)
                # route by model: the unified endpoint only (`proxy.unified`)
                plan = plan_route(gw, path, body, doc)
                if plan is not None:
                    ex.arm(receive, gw.loop)
                    await forward_chain(gw, ex, send, plan, headers, qs)
                    return
            # translate in: the client's family (by path) vs the provider's
            ex.adapter = adapter_for(None, rt.dialect, rest, name)
        if ex.adapter is not None:
            up_path, ex.wire = ex.adapter.path, ex.adapter.wire
            body = translate_request(ex.adapter, body, cfg)
            doc = None
            ex.model = ex.adapter.model
            qs = ""  # the client API's parameters (Claude Code's ?beta=true) mean nothing there
            if ex.adapter.local is not None:
                await answer_locally(ex, send)
                return
        elif body and method == "POST":
            filled = apply_model(body, cfg, up_path)
            if filled is not body:
                body, doc = filled, None
            ex.model = find_model(body)
        if ex.client is not None:  # 403/429, before upstream
            up_path, body = await clients.admit(gw, ex, name, up_path, body, doc, headers)
        ex.serve(name, ex.model)
        # a client's reservation is the estimate read from its parsed body, when it has one
        reserved = ex.reserved.tokens if ex.reserved is not None else -1
        ex.ticket = Ticket(body, cfg.default_max_tokens, ex.usage, reserved)
        if not rt.pool.entries:
            raise GatewayError(503, f"no API key configured for provider '{name}'", "no_keys")
        ex.arm(receive, gw.loop)
        url = cfg.base_url + up_path + qs
        failure = await forward(gw, rt, ex, send, method, url, headers, body or None)
        if failure is not None:
            await _give_up(ex, send, failure)
    except GatewayError as err:
        ex.status = err.status
        ex.error = err.message
        ex.finishing = True
        err.headers = [*err.headers, *ex.served]
        # the client's family: its adapter's, a routed try's, else as the path tells (an
        # error before the adapter was chosen, a 413 say, still answers in the client's shape)
        if ex.adapter is not None:
            client_dialect = ex.adapter.client
        elif ex.runtime is not None:
            client_dialect = ex.wire
        else:
            client_dialect = error_dialect(rt, rest, headers)
        await send_error(send, err, client_dialect)
    except ClientGone:
        ex.status = 499
        ex.error = "client disconnected"
    except asyncio.CancelledError:
        if not absorb_cancel(ex.disconnected):
            raise
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
    budget: int | None = None,
    more: bool = False,
) -> Failure | None:
    """Tries one provider until an answer is relayed (None), or says why none could be: a
    `Failure` for the caller to answer (`_give_up`) or take to the next target. `budget`: the
    retries allowed here (default the provider's); `more`: another target follows, so a
    failure before the first byte is handed back rather than retried here."""
    cfg = rt.cfg
    budget = cfg.retries if budget is None else budget
    pool = rt.pool
    wire = ex.wire
    assert wire is not None and gw.session is not None and ex.dog is not None
    tried: list[int] = []
    retries_used = key_retries = 0
    # the last upstream error answer (status, raw headers, body) and the key it was given
    last: tuple[int, Any, bytes, bytes] | None = None
    last_error: GatewayError | None = None  # or keygate's own 502/504
    delay = 0.0
    while True:
        if delay > 0:
            await sleep(delay)
        # admission
        try:
            slot = await rt.admission.acquire(ex.client.id if ex.client is not None else None)
        except Rejected as rej:
            busy = GatewayError(
                429,
                f"provider '{cfg.name}' is busy ({rej.reason}); retry later",
                "rate_limited",
                retry_after_headers(rej.retry_after_s),
            )
            return Failure(rt, None, busy, 0.0, True)
        delay = 0.0
        held = None
        try:  # from here the slot goes back on every path, cancellation included
            if getattr(slot, "queued", True):
                # It waited: if its client left meanwhile, find out before anything goes upstream.
                ex.watch()
                await asyncio.sleep(0)
            # pick key: one not tried yet, else one we tried, else how long until one is usable
            pick = await pool.acquire(tried, ex.ticket)
            held = pick.entry
            if held is None:
                # every key's quota is spent: wait for the earliest reset, unless another
                # target may serve now (a chain passes a spent provider over at once)
                delay = 0.0 if more else quota_delay(pick, ex.ticket, cfg.queue_timeout_s)
                if delay:
                    ex.watch()
                    continue
                return Failure(rt, last, last_error, pick.wait, True, pick.quota)
            entry = ex.entry = held
            hold = more or retries_used < budget  # a stream's first event may still be retried
            first = b""
            # forward; the watchdog is stopped by whoever reads the answer
            try:
                resp = await open_upstream(
                    gw.session,
                    method,
                    url,
                    request_headers(client_headers, wire, entry.secret, body is not None),
                    body,
                    rt.timeout,
                    ex.dog,
                    cfg.timeout_first_byte_s,
                )
                if hold and resp.status < 300 and resp.content_length is None:
                    first = await hold_first(resp, ex.dog, cfg.timeout_first_byte_s)
            except (UpstreamTimeout, UpstreamUnreachable) as exc:
                timed_out = isinstance(exc, UpstreamTimeout)
                last = None
                last_error = GatewayError(
                    504 if timed_out else 502,
                    f"upstream {cfg.name}: {exc}",
                    "upstream_timeout" if timed_out else "upstream_unreachable",
                )
                verdict = Verdict(Event.PROVIDER_ERROR, None, True, False, str(exc))
                ex.upstream_status = 0
                entry.err_5xx += 1
            else:
                ex.upstream_status = status = resp.status
                if status < 400 and not (first and opens_with_error(first)):
                    held = None  # relay owns the key from here
                    await relay(rt, ex, send, resp, entry, method == "HEAD", first)
                    return None
                # classify the refusal (or the error a 200 stream opened with)
                ex.dog.stop()
                try:
                    if first:
                        err_body, status = first, error_status(first)
                    else:
                        err_body = await read_limited(resp, ERROR_BODY_LIMIT, cfg.timeout_idle_s)
                finally:
                    resp.close()
                verdict = classify(status, lower_headers(resp), err_body, None, wire.reset_hint)
                last = (resp.status, resp.raw_headers, err_body, entry.secret.encode())
                last_error = None
                if status < 500:
                    entry.err_4xx += 1
                else:
                    entry.err_5xx += 1
            held = None
            pause = await pool.release(
                entry,
                verdict.event,
                verdict.until,
                verdict.message,
                ex.ticket,
                wire.read_budget(resp.headers) if last is not None else None,
            )
            if pause:
                rt.admission.pause_until(pause)
            # retry?
            if not verdict.retry:
                return Failure(rt, last, last_error, 0.0, False)
            if cfg.retries == 0:
                break
            if verdict.key_fault and verdict.event is not Event.RATE_LIMITED:
                # A dead key (invalid, out of quota): swap it for another at once. These swaps
                # have their own small allowance so a few dead keys never fail a client.
                if key_retries >= cfg.retries + 2:
                    break
                key_retries += 1
            else:
                # 429, 5xx, 529, timeouts, refused connections: the retry budget.
                if retries_used >= budget:
                    break
                retries_used += 1
                if verdict.key_fault and await pool.ready_in([*tried, entry.id]) == 0.0:
                    delay = 0.0  # rate-limited key: another key is ready now
                else:
                    backoff = _backoff(cfg.backoff_base_s, retries_used - 1)
                    # a hint is a wall-clock moment: wake just after it, never just before
                    until = verdict.until
                    delay = max(backoff, (until - time.time() + 0.02) if until else 0.0)
            if delay > cfg.retry_after_max_s:
                break
            tried.append(entry.id)
            ex.retries += 1
        finally:
            if held is not None:
                await pool.release(held, Event.CANCELLED)
            await slot.release()
    return Failure(rt, last, last_error, pick.wait, True, pick.quota)


async def forward_chain(
    gw: Gateway,
    ex: Exchange,
    send: Any,
    plan: Plan,
    client_headers: list[tuple[bytes, bytes]],
    qs: str,
) -> None:
    """A routed request: its targets in order, each on its provider's normal path (limits,
    keys, health). A failure before the first byte moves on to the next target, within one
    retry budget; a target that cannot serve now is passed over at once; the last target's
    failure is the answer."""
    ex.wire = plan.client_dialect  # until a target is tried: errors in the client's shape
    tries = plan.order(gw)
    if plan.route.strategy == "spread" and len(tries) > 1:
        tries = await plan.spread(tries)
    if ex.client is not None:  # the targets this client may use, and its limits: 403/429 here
        tries = clients.allowed_targets(ex.client, plan.model, tries)
        await clients.charge(gw, ex, plan.body, tries[0][0].cfg.default_max_tokens, plan.parsed)
    final = len(tries) - 1
    budget = plan.budget(tries) if final else -1  # -1: the one provider's own
    failure = None
    for i, (rt, target, adapter) in enumerate(tries):
        last = i == final
        if not last and not rt.pool.usable_now():
            ex.via.append(f"{target} (no usable key)")
            continue
        cfg = rt.cfg
        ex.runtime = rt
        ex.adapter = adapter
        ex.model = cfg.default_model if cfg.force_model and cfg.default_model else target.model
        if adapter is None:
            up_path, ex.wire = rt.dialect.route(plan.path, client_headers)
            body = plan.body_for(target, ex.model if cfg.force_model else "")
            url = cfg.base_url + up_path + qs
        else:  # another API family: the parsed body translated for this target (§11)
            ex.wire = adapter.wire
            body = translate_doc(adapter, plan.doc, cfg, ex.model)
            url = cfg.base_url + adapter.path
            if adapter.local is not None:
                ex.serve(cfg.name, ex.model)
                await answer_locally(ex, send)
                return
        ex.serve(cfg.name, ex.model)
        reserved = ex.reserved.tokens if ex.reserved is not None else -1
        ex.ticket = Ticket(body, cfg.default_max_tokens, ex.usage, reserved)
        left = None if budget < 0 else 0 if not last else max(0, budget - ex.retries)
        failure = await forward(gw, rt, ex, send, "POST", url, client_headers, body, left, not last)
        if failure is None:
            ex.via.append(target.name)
            return
        ex.via.append(f"{target.name} ({failure.reason()})")
        if last or not failure.retryable or ex.retries >= budget:
            break
        ex.retries += 1
    assert failure is not None
    await _give_up(ex, send, failure)


def _backoff(base: float, n: int) -> float:
    """Exponential with jitter: base·2ⁿ scaled by a random factor in [0.5, 1.0]."""
    return base * (2**n) * (0.5 + random.random() / 2)


async def _give_up(ex: Exchange, send: Any, failure: Failure) -> None:
    """Out of tries, or no key to try with: relay the last refusal, or say why ourselves.
    Once keygate has retried, the client's SDK is told not to retry on top (x-should-retry)."""
    rt, last, last_error, wait = failure.rt, failure.last, failure.last_error, failure.wait
    quota = failure.quota
    cfg = rt.cfg
    retried = ex.retries > 0
    if last is not None:
        status, raw_headers, err_body, injected = last
        # cold path: every key of the pool, not only the one this try injected
        redactor = redactor_for(cfg.name)
        headers = response_headers(raw_headers)
        if ex.adapter is not None:  # the refusal in the client's family, status kept
            err_body, headers = ex.adapter.error(status, err_body, headers)
        # scrubbed as the client reads it (a translation may join what came in pieces)
        err_body = redactor.scrub(err_body, rt.pool.entries, injected)
        headers = redactor.scrub_headers(headers, rt.pool.entries, injected)
        if retried or status in (401, 403):
            headers = [h for h in headers if h[0] != b"x-should-retry"] + [_NO_RETRY]
        # the body may have been cut at ERROR_BODY_LIMIT or by a broken upstream: say what we send
        headers = [h for h in headers if h[0] != b"content-length"] + [
            (b"content-length", str(len(err_body)).encode()),
            *ex.served,
        ]
        ex.status = status
        ex.error = f"upstream answered {status}"
        ex.finishing = True
        await respond(send, status, headers, err_body)
        return
    if last_error is not None:
        if retried:
            last_error.retry = False  # keygate already retried on another try
        raise last_error
    if wait is None:
        if not rt.pool.entries:  # as the prefix route says it (a routed target gets here)
            raise GatewayError(503, f"no API key configured for provider '{cfg.name}'", "no_keys")
        raise GatewayError(
            503,
            f"no usable API key for provider '{cfg.name}' (all invalid, exhausted or disabled)",
            "no_usable_key",
        )
    if quota:
        raise GatewayError(
            429,
            f"every key of provider '{cfg.name}' has spent its quota; retry in {wait:.1f}s",
            "keys_quota_exhausted",
            retry_after_headers(wait),
        )
    raise GatewayError(
        429,
        f"every key of provider '{cfg.name}' is cooling down; retry in {wait:.1f}s",
        "keys_cooling",
        retry_after_headers(wait),
    )


async def relay(
    rt: ProviderRuntime,
    ex: Exchange,
    send: Any,
    resp: aiohttp.ClientResponse,
    entry: Any,
    head: bool,
    first: bytes = b"",
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
    headers = response_headers(resp.raw_headers, secret, masked)
    headers += ex.served
    length = resp.content_length
    try:
        dog.watch(idle)
        if ex.adapter is not None:
            event = await relay_translated(ex, send, resp, headers, secret, masked, idle, first)
            return
        if length is not None and 0 < length <= WHOLE_BODY_LIMIT and not head:
            event = await _relay_whole(ex, send, resp, headers, secret, masked, idle)
            return
        if length is not None and not head:
            # too big to hold: a replacement would change the length, so stream it unframed
            headers = [h for h in headers if h[0] != b"content-length"]
        scrubber = StreamScrubber(secret, masked)
        event = await _relay_stream(ex, send, resp, headers, scrubber, idle, first)
    except GatewayError:
        event = Event.PROVIDER_ERROR
        raise
    finally:
        dog.stop()
        if event is Event.OK:
            resp.release()
        else:
            resp.close()
        # the outcome's counters before the release, which marks the key for the next flush
        if event is Event.OK:
            entry.ok += 1
        elif event is Event.PROVIDER_ERROR:
            entry.err_5xx += 1
        entry.tokens_in += ex.usage[0]
        entry.tokens_out += ex.usage[1]
        await pool.release(entry, event, None, "", ex.ticket, ex.wire.read_budget(resp.headers))


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
    assert ex.dog is not None and ex.wire is not None
    body = await read_answer(resp, ex, idle)
    ex.wire.scan_usage(body, ex.usage, True)
    scrubbed = body.replace(secret, masked)  # the same object when there was nothing to mask
    if scrubbed is not body:
        body = scrubbed
        headers = [h for h in headers if h[0] != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
    ex.status = resp.status
    ex.finishing = True
    # the relayed answer is sent inline, not through `asgi.respond`: a coroutine per request
    await send({"type": "http.response.start", "status": resp.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
    return Event.OK


async def _relay_stream(
    ex: Exchange,
    send: Any,
    resp: aiohttp.ClientResponse,
    headers: list[tuple[bytes, bytes]],
    scrubber: StreamScrubber,
    idle: float,
    first: bytes = b"",
) -> Event:
    """Chunks go on as they arrive; only a tail that may begin the key waits for the next.
    `first`: what was read already to judge the stream's first event."""
    dog = ex.dog
    assert dog is not None and ex.wire is not None
    await send({"type": "http.response.start", "status": resp.status, "headers": headers})
    ex.status = resp.status
    content = resp.content
    usage = ex.usage
    scan_usage = ex.wire.scan_usage
    try:
        while True:
            if first:
                chunk, first = first, b""
            else:
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
        if not absorb_cancel(dog.fired and not ex.disconnected):
            raise
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
    if ex.runtime is not None:  # a routed request: the provider that answered counts it
        rt, name = ex.runtime, ex.runtime.cfg.name
    entry = ex.entry
    now = time.time()
    if rt is not None and ex.status != 204:
        stats = rt.stats
        stats.record(ex.status, latency_ms, now)
        stats.tokens_in += ex.usage[0]
        stats.tokens_out += ex.usage[1]
    key_id = entry.id if entry is not None else None
    masked = entry.masked if entry is not None else ""
    client = ex.client.name if ex.client is not None else ""
    if client:
        clients.account(gw, ex, now)
    if ex.error and rt is not None:
        # what goes to the log and the ring never carries a key, whoever wrote the text
        ex.error = redactor_for(name).scrub_text(
            ex.error, rt.pool.entries, entry.secret.encode() if entry is not None else b""
        )
    record = RequestRecord(
        now,
        name if rt is not None else "",
        method,
        path,
        ex.model,
        key_id,
        masked,
        ex.status,
        latency_ms,
        ex.retries,
        ex.error,
        " → ".join(ex.via) if ex.via else "",
        ex.adapter.label if ex.adapter is not None else "",
        client,
    )
    gw.recent.append(record)
    if access_log.enabled:
        peer = scope.get("client")
        access_log.request(record, ex.upstream_status, peer[0] if peer else "")
