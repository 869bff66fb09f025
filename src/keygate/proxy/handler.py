"""The request path's entry: one call of `handle` serves one client request.

auth → route → body → plan → `pipeline.run` (admit → pick key → try → classify → retry or next
target → relay) → account

Here a request is read and resolved to a plan: the prefix route's one provider (its body made
for that provider, translated when the client speaks another API family) or the unified
endpoint's targets (`proxy.unified`). Errors keygate makes itself are answered here, in the
client's API shape, and whatever happened is accounted for (`proxy.account`). What is
particular to an API family (key header, paths, error shape, usage, reset hints) is the
provider's dialect's (`keygate.dialects`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from keygate.dialects import Dialect
from keygate.dialects.openai import OPENAI
from keygate.http.asgi import BadContentLength, BodyTooLarge, ClientGone, read_body, respond
from keygate.http.errors import GatewayError
from keygate.proxy import affinity, clients, pipeline
from keygate.proxy import cache as response_cache
from keygate.proxy.account import account
from keygate.proxy.auth import split_key_param
from keygate.proxy.exchange import Exchange
from keygate.proxy.forward import EXPOSE_HEADERS
from keygate.proxy.models import MERGED, serve_model_list
from keygate.proxy.pipeline import NO_RETRY
from keygate.proxy.plan import PrefixPlan
from keygate.proxy.route import apply_model, find_model, resolve_dots, split_prefix
from keygate.proxy.suggest import check_listed
from keygate.proxy.translated import answer_locally, translate_request
from keygate.proxy.unified import plan_route
from keygate.proxy.watchdog import absorb_cancel
from keygate.runtime.gateway import Gateway
from keygate.runtime.provider import ProviderRuntime
from keygate.translate import adapter_for

JSON_HEADERS = [
    (b"content-type", b"application/json"),
    (b"access-control-allow-origin", b"*"),
    EXPOSE_HEADERS,
]


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
        headers.append(NO_RETRY)  # the SDKs would otherwise retry what cannot change
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
        adoc = None  # the body parsed for affinity, which what follows reads too
        if method == "POST":
            if body and path.startswith("/v1/"):
                if ex.client is not None and ex.client.checks_body:
                    doc = clients.read_request(ex.client, body, headers)
                    if doc is not None and ex.client.token_limited:
                        body = clients.ask_for_usage(body, doc, path)
                # route by model: the unified endpoint only (`proxy.unified`)
                plan = plan_route(gw, path, body, doc)
                if plan is not None:
                    plan.headers, plan.qs = headers, qs
                    ex.arm(receive, gw.loop)
                    await plan.resolve(gw, ex)
                    await pipeline.run(gw, ex, send, plan, True)
                    return
            # translate in: the client's family (by path) vs the provider's
            ex.adapter = adapter_for(None, rt.dialect, rest, name)
            if body and cfg.affinity != "off":
                # the conversation's name, from the body parsed once for everything after
                # (a provider with affinity off pays nothing of it)
                adoc = doc if doc is not None else affinity.parse(body)
                ex.conv = affinity.conversation(cfg.affinity, name, headers, adoc)
        if ex.adapter is not None:
            up_path, ex.wire = ex.adapter.path, ex.adapter.wire
            body = translate_request(ex.adapter, body, cfg, adoc)
            doc = None
            ex.model = ex.adapter.model
            qs = ""  # the client API's parameters (Claude Code's ?beta=true) mean nothing there
            if ex.adapter.local is not None:
                await answer_locally(ex, send)
                return
        elif body and method == "POST":
            filled = apply_model(body, cfg, up_path, adoc)
            if filled is not body:
                body, doc = filled, None
            ex.model = find_model(body)
        if cfg.strict_models and ex.model and method == "POST":  # 404 before anything is sent
            await check_listed(gw, rt, ex.model, path.startswith("/v1/"), ex.client)
        # SPEC §19: the cache is looked up before any admission; for a client key with model
        # lists or limits that read the body, after its own checks (what it may not ask for,
        # it may not be answered from the cache either)
        cached = cfg.cache is not None and method == "POST"
        if (
            cached
            and (ex.client is None or not ex.client.checks_body)
            and await response_cache.lookup(
                gw.cache, ex, send, cfg, (method, path, qs, up_path), body, headers
            )
        ):
            return
        if ex.client is not None:  # 403/429, before upstream
            up_path, body = await clients.admit(gw, ex, name, up_path, body, doc, headers)
            if (
                cached
                and ex.client.checks_body
                and await response_cache.lookup(
                    gw.cache, ex, send, cfg, (method, path, qs, up_path), body, headers
                )
            ):
                return
        ex.serve(name, ex.model, cfg.affinity == "off")
        if ex.cache is not None:
            ex.served += (ex.cache.tag,)
        if not rt.pool.entries:
            raise GatewayError(503, f"no API key configured for provider '{name}'", "no_keys")
        ex.arm(receive, gw.loop)
        url = cfg.base_url + up_path + qs
        await pipeline.run(
            gw,
            ex,
            send,
            PrefixPlan(rt, ex.adapter, method, url, headers, body or None),
            path.startswith("/v1/"),
        )
    except GatewayError as err:
        ex.status = err.status
        ex.error = err.message
        ex.finishing = True
        err.headers = [*err.headers, *ex.served]
        # the client's family: its adapter's, a routed try's, else as the path tells (an
        # error before the adapter was chosen, a 413 say, still answers in the client's shape)
        if ex.adapter is not None:
            client_dialect = ex.adapter.client
        elif ex.runtime is not None and ex.wire is not None:
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
        account(gw, rt, ex, name, method, path, started, scope)
