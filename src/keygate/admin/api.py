"""The admin JSON API under /api (docs/admin-api.md): keys, providers, stats, config, requests.

A raw ASGI callable with a small (method, regex) routing table, like the rest of keygate: no
framework, no new dependency. Every write goes to the store first (so a crash loses no admin
change) and is then applied to the running gateway at once (key pools, limits, default model).
Secrets only ever come in: every answer shows keys masked, error messages included.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import orjson

from keygate import __version__
from keygate.admin.auth import (
    CSRF_HEADER,
    SCOPE_COOKIE,
    SESSION_COOKIE,
    AdminAuth,
    read_cookie,
    session_cookie,
)
from keygate.admin.openapi import document as openapi_document
from keygate.control.keypool import KeyEntry, mask
from keygate.gateway import Gateway, ProviderRuntime
from keygate.observe import log
from keygate.probe import run_key_test
from keygate.proxy.errors import GatewayError, retry_after_headers
from keygate.settings import BOUNDS
from keygate.store.base import (
    KEY_STATUSES,
    DuplicateKey,
    InvalidKey,
    KeyRecord,
    parse_key_input,
)

BODY_LIMIT = 1 << 20  # ordinary requests: a key, a few settings
BATCH_BODY_LIMIT = 8 << 20  # a batch import of 100,000 keys fits
LIST_LIMIT_DEFAULT = 50
LIST_LIMIT_MAX = 500
LIST_OFFSET_MAX = 10_000_000  # far past any real key count; SQL needs a 64-bit integer
# Per-key limits share the bounds of their provider-wide defaults (key_rpm, key_max_conn).
KEY_LIMIT_MAX = {"rpm": int(BOUNDS["key_rpm"]), "max_conn": int(BOUNDS["key_max_conn"])}
REQUESTS_LIMIT_DEFAULT = 100
PROVIDER_TEST_MAX = 200  # keys tested by one POST /api/providers/{name}/test
PROVIDER_TEST_PARALLEL = 10
LABEL_MAX = 200
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
}
_JSON_HEADERS = [
    (b"content-type", b"application/json"),
    (b"cache-control", b"no-store"),
    (b"x-content-type-options", b"nosniff"),
]


class ApiError(GatewayError):
    """An answer other than success; `param` names the offending field for the page's forms."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str,
        param: str | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        super().__init__(status, message, code, headers)
        self.param = param


def bad(field: str, problem: str) -> ApiError:
    """A 400 whose message starts with the field, as the contract asks."""
    return ApiError(400, f"{field}: {problem}", "invalid_value", param=field)


@dataclass(slots=True)
class Reply:
    status: int
    doc: Any  # JSON-able, or bytes sent as they are with `content_type`
    headers: list[tuple[bytes, bytes]] | None = None
    content_type: bytes | None = None


@dataclass(slots=True)
class Request:
    """What a handler needs: the scope, the parsed query, and the body on demand."""

    scope: dict[str, Any]
    receive: Any
    limit: int
    query: dict[str, str]

    @property
    def method(self) -> str:
        return str(self.scope["method"])

    async def body(self) -> bytes:
        for name, value in self.scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    raise ApiError(400, "invalid Content-Length header", "bad_request") from None
                if declared > self.limit:
                    raise _too_large(self.limit)
        parts: list[bytes] = []
        size = 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise ApiError(400, "client disconnected", "client_gone")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                raise _too_large(self.limit)
            parts.append(chunk)
            if not message.get("more_body"):
                return b"".join(parts)

    async def json(self) -> dict[str, Any]:
        """The body as a JSON object; anything else is a 400, never a crash."""
        raw = await self.body()
        if not raw.strip():
            return {}
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise ApiError(400, "body: not valid JSON", "invalid_json", param="body") from None
        if not isinstance(doc, dict):
            raise ApiError(400, "body: must be a JSON object", "invalid_json", param="body")
        return doc


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"body: larger than {limit} bytes", "request_too_large", param="body")


Handler = Callable[..., Awaitable[Reply]]


@dataclass(slots=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler
    limit: int = BODY_LIMIT
    public: bool = False  # only the login


class AdminAPI:
    """`AdminAPI(gateway)` is mounted by app.py for every path under /api."""

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        self.auth = AdminAuth(gateway)
        r = re.compile
        self.routes: list[Route] = [
            Route("POST", r(r"/api/session"), self.login, public=True),
            Route("GET", r(r"/api/session"), self.session_info),
            Route("DELETE", r(r"/api/session"), self.logout),
            Route("GET", r(r"/api/providers"), self.list_providers),
            Route("PATCH", r(r"/api/providers/([^/]+)"), self.patch_provider),
            Route("POST", r(r"/api/providers/([^/]+)/test"), self.test_provider),
            Route("GET", r(r"/api/keys"), self.list_keys),
            Route("POST", r(r"/api/keys"), self.add_key),
            Route("POST", r(r"/api/keys/batch"), self.import_keys, limit=BATCH_BODY_LIMIT),
            Route("PATCH", r(r"/api/keys/(\d{1,18})"), self.patch_key),
            Route("DELETE", r(r"/api/keys/(\d{1,18})"), self.delete_key),
            Route("POST", r(r"/api/keys/(\d{1,18})/test"), self.test_key),
            Route("GET", r(r"/api/stats"), self.stats),
            Route("GET", r(r"/api/config"), self.config),
            Route("PUT", r(r"/api/config/default-model"), self.put_default_model),
            Route("GET", r(r"/api/requests"), self.requests),
            Route("GET", r(r"/api/openapi\.json"), self.openapi),
            Route("GET", r(r"/metrics"), self.metrics),
            Route("GET", r(r"/healthz"), self.health),
        ]
        self._metrics: Any = None

    # --- ASGI ----------------------------------------------------------------------------------
    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        method: str = scope["method"]
        path: str = scope["path"]
        if len(path) > 1:
            path = path.rstrip("/") or "/"
        try:
            route, args, allowed = self._match(method, path)
            if route is None or not route.public:
                await self._authorize(scope)
            if route is None:
                if allowed:
                    allow = ", ".join(allowed).encode()
                    raise ApiError(
                        405,
                        f"{method} is not allowed on {path}",
                        "method_not_allowed",
                        headers=[(b"allow", allow)],
                    )
                raise ApiError(404, f"no such admin API route: {path}", "not_found")
            query = dict(parse_qsl(scope.get("query_string", b"").decode("utf-8", "replace")))
            reply = await route.handler(Request(scope, receive, route.limit, query), *args)
        except ApiError as err:
            reply = _error_reply(err)
        except Exception as exc:
            log.exception("admin API %s %s failed: %s", method, path, type(exc).__name__)
            reply = _error_reply(ApiError(500, "internal error; see the gateway log", "internal"))
        if reply.content_type is not None:
            body = reply.doc
            headers = [(b"content-type", reply.content_type), (b"cache-control", b"no-store")]
        else:
            body = orjson.dumps(reply.doc)
            headers = list(_JSON_HEADERS)
        headers.append((b"content-length", str(len(body)).encode()))
        if SCOPE_COOKIE in scope:  # the session cookie slid forward (admin/auth.py)
            headers.append((b"set-cookie", session_cookie(*scope[SCOPE_COOKIE], _is_https(scope))))
        await send(
            {
                "type": "http.response.start",
                "status": reply.status,
                "headers": headers + (reply.headers or []),
            }
        )
        await send({"type": "http.response.body", "body": body})

    def _match(self, method: str, path: str) -> tuple[Route | None, tuple[str, ...], list[str]]:
        allowed: list[str] = []
        for route in self.routes:
            m = route.pattern.fullmatch(path)
            if m is None:
                continue
            if route.method == method:
                return route, m.groups(), []
            allowed.append(route.method)
        return None, (), allowed

    async def _authorize(self, scope: dict[str, Any]) -> None:
        """Bearer (a wrong one is charged to the failed-attempt throttle, like the login form) or
        the session cookie; a valid cookie without the CSRF header on a write is 403, not 401."""
        bearer = False
        cookie: str | None = None
        csrf = False
        for name, value in scope["headers"]:
            if name == b"authorization":
                bearer = value.partition(b" ")[0].lower() == b"bearer"
            elif name == b"cookie":
                cookie = read_cookie(value.decode("latin-1"), SESSION_COOKIE) or cookie
            elif name == CSRF_HEADER:
                csrf = True
        if bearer:
            if await self.auth.check(scope):
                return
            raise _refused(self.auth.failed(scope, "admin API"), "invalid admin credentials")
        if await self.auth.check(scope):
            return
        if (
            cookie
            and scope["method"] not in _SAFE_METHODS
            and not csrf
            and await self.auth.session_ok(cookie)
        ):
            raise ApiError(
                403, "the x-keygate-csrf header is required with cookie auth", "csrf_required"
            )
        raise _unauthorized("admin authentication required")

    # --- session ----------------------------------------------------------------------------
    async def login(self, req: Request) -> Reply:
        doc = await req.json()
        password = doc.get("password")
        if not isinstance(password, str) or not password:
            raise bad("password", "required")
        if not await self.auth.password_ok(password):
            raise _refused(self.auth.failed(req.scope, "admin login"), "wrong admin password")
        token = await self.auth.new_session()
        cookie = session_cookie(token, self.auth.max_age(token), _is_https(req.scope))
        return Reply(200, {"ok": True}, [(b"set-cookie", cookie)])

    async def session_info(self, req: Request) -> Reply:
        return Reply(200, {"ok": True})

    async def logout(self, req: Request) -> Reply:
        req.scope.pop(SCOPE_COOKIE, None)
        for name, value in req.scope["headers"]:
            if name == b"cookie":
                token = read_cookie(value.decode("latin-1"), SESSION_COOKIE)
                if token:
                    await self.auth.revoke(token)
        cookie = f"{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"
        if _is_https(req.scope):
            cookie += "; Secure"
        return Reply(200, {"ok": True}, [(b"set-cookie", cookie.encode())])

    # --- providers ----------------------------------------------------------------------------
    def _runtime(self, name: str) -> ProviderRuntime:
        rt = self.gw.providers.get(name)
        if rt is None:
            raise ApiError(404, f"no provider named {name!r}", "not_found")
        return rt

    def _provider_view(self, rt: ProviderRuntime) -> dict[str, Any]:
        counts = rt.pool.counts()
        snap = rt.admission.snapshot()
        return {
            **rt.cfg.public(),
            "keys": {**counts, "total": sum(counts.values())},
            "in_flight": snap["in_flight"],
            "queued": snap["queued"],
            "paused_for_s": snap["paused_for_s"],
        }

    async def list_providers(self, req: Request) -> Reply:
        return Reply(
            200, {"providers": [self._provider_view(rt) for rt in self.gw.providers.values()]}
        )

    async def patch_provider(self, req: Request, name: str) -> Reply:
        rt = self._runtime(name)
        fields = await req.json()
        if fields:
            try:
                await self.gw.update_provider(name, fields)
            except ValueError as exc:
                field = str(exc).partition(":")[0]
                raise ApiError(400, str(exc), "invalid_value", param=field) from None
            log.info("admin: provider %s changed: %s", name, ", ".join(sorted(fields)))
        return Reply(200, self._provider_view(rt))

    async def test_provider(self, req: Request, name: str) -> Reply:
        rt = self._runtime(name)
        entries = [e for e in rt.pool.entries.values() if e.status != "disabled"]
        entries = entries[:PROVIDER_TEST_MAX]
        gate = asyncio.Semaphore(PROVIDER_TEST_PARALLEL)

        async def one(entry: KeyEntry) -> dict[str, Any]:
            async with gate:
                return await self._test_entry(rt, entry)

        results = await asyncio.gather(*(one(e) for e in entries))
        return Reply(200, {"results": list(results)})

    # --- keys ---------------------------------------------------------------------------------
    def _entry(self, provider: str, key_id: int) -> KeyEntry | None:
        rt = self.gw.providers.get(provider)
        return rt.pool.entries.get(key_id) if rt is not None else None

    def _key_view(self, rec: KeyRecord, now: float) -> dict[str, Any]:
        """Memory is fresher than the store for health and counters; the record is the
        fallback for keys the running gateway does not hold (e.g. of an unknown provider)."""
        entry = self._entry(rec.provider, rec.id)
        if entry is not None:
            return _entry_view(entry, now)
        status = rec.status
        if status == "cooling" and rec.until <= now:
            status = "active"
        return {
            "id": rec.id,
            "provider": rec.provider,
            "masked": rec.masked,
            "label": rec.label,
            "status": status,
            "use_count": rec.use_count,
            "last_used": rec.last_used or None,
            "created_at": rec.created_at,
            "last_error": rec.last_error or None,
            "cooldown_until": rec.until if status in ("cooling", "exhausted", "invalid") else None,
            "source": rec.source,
            "inflight": 0,
            "ok": rec.ok,
            "err_4xx": rec.err_4xx,
            "err_5xx": rec.err_5xx,
            "tokens_in": rec.tokens_in,
            "tokens_out": rec.tokens_out,
            "rpm": rec.rpm,
            "max_conn": rec.max_conn,
        }

    async def _record(self, key_id: int) -> KeyRecord:
        recs = await self.gw.store.get_keys([key_id])
        if not recs:
            raise ApiError(404, f"no key with id {key_id}", "not_found")
        return recs[0]

    async def list_keys(self, req: Request) -> Reply:
        q = req.query
        provider = q.get("provider") or None
        status = q.get("status") or None
        search = (q.get("q") or "").strip() or None
        limit = _int_param(q, "limit", LIST_LIMIT_DEFAULT, 0, None)
        limit = min(limit, LIST_LIMIT_MAX)
        offset = _int_param(q, "offset", 0, 0, LIST_OFFSET_MAX)
        if status is not None and status not in KEY_STATUSES:
            raise bad("status", f"must be one of {', '.join(KEY_STATUSES)}")
        now = time.time()
        if status is None:
            recs, total = await self.gw.store.list_keys(provider, None, search, limit, offset)
            return Reply(200, {"keys": [self._key_view(r, now) for r in recs], "total": total})
        # Health changes from traffic reach the store only at the next flush (or never with
        # KV_FLUSH_INTERVAL_MS=0), so a status filter is answered from memory.
        found = await self._filter_by_status(provider, status, search, now)
        found.sort(key=lambda item: item.id, reverse=True)
        page = found[offset : offset + limit]  # render only the page: there may be 100k
        views = [
            _entry_view(item, now) if isinstance(item, KeyEntry) else self._key_view(item, now)
            for item in page
        ]
        return Reply(200, {"keys": views, "total": len(found)})

    async def _filter_by_status(
        self, provider: str | None, status: str, search: str | None, now: float
    ) -> list[KeyEntry | KeyRecord]:
        needle = search.lower() if search else None
        out: list[KeyEntry | KeyRecord] = []
        names = [provider] if provider else list(self.gw.providers)
        for name in names:
            rt = self.gw.providers.get(name)
            if rt is None:
                continue
            for entry in rt.pool.entries.values():
                if _effective_status(entry, now) != status:
                    continue
                if needle and not (
                    needle in entry.label.lower()
                    or needle in entry.masked.lower()
                    or search == entry.secret
                ):
                    continue
                out.append(entry)
        # Keys of providers this gateway does not run exist only in the store.
        stored = await self.gw.store.key_counts()
        for name in stored:
            if name in self.gw.providers or (provider and name != provider):
                continue
            recs, _ = await self.gw.store.list_keys(name, status, search, 1_000_000, 0)
            out.extend(recs)
        return out

    async def add_key(self, req: Request) -> Reply:
        doc = await req.json()
        provider = self._provider_field(doc)
        secret = doc.get("key")
        if not isinstance(secret, str) or not secret.strip():
            raise bad("key", "required (a non-empty string)")
        label = doc.get("label", "")
        if label is None:
            label = ""
        if not isinstance(label, str) or len(label) > LABEL_MAX:
            raise bad("label", f"must be a string of at most {LABEL_MAX} characters")
        try:
            rec = await self.gw.store.add_key(provider, secret, label=label, source="api")
        except DuplicateKey:
            existing = await self._duplicate_id(provider, secret.strip())
            where = f" (id {existing})" if existing is not None else ""
            raise ApiError(
                409,
                f"key: {provider} already has this key {mask(secret.strip())}{where}",
                "duplicate_key",
                param="key",
            ) from None
        except InvalidKey as exc:
            raise bad("key", str(exc)) from None
        entry = self.gw.adopt_key(rec)
        log.info("admin: added %s key %s#%d", provider, rec.masked, rec.id)
        view = _entry_view(entry, time.time()) if entry else self._key_view(rec, time.time())
        return Reply(201, {"id": rec.id, "key": view})

    async def _duplicate_id(self, provider: str, secret: str) -> int | None:
        """The id of the stored twin: the store matches a whole pasted secret by fingerprint."""
        recs, _ = await self.gw.store.list_keys(provider, None, secret, 50, 0)
        masked = mask(secret)
        for rec in recs:
            if rec.masked == masked:
                return rec.id
        return None

    async def import_keys(self, req: Request) -> Reply:
        doc = await req.json()
        provider = self._provider_field(doc)
        raw = doc.get("input")
        if isinstance(raw, str):
            tokens = parse_key_input(raw)
        elif isinstance(raw, list) and all(isinstance(item, str) for item in raw):
            tokens = [tok.strip() for tok in raw if tok.strip()]
        else:
            raise bad("input", "must be text or an array of strings")
        results = await self.gw.store.add_keys(provider, tokens, source="api") if tokens else []
        added = [r.id for r in results if r.status == "added" and r.id is not None]
        if added:
            for rec in await self.gw.store.get_keys(added):
                self.gw.adopt_key(rec)
        counts = {"added": 0, "duplicate": 0, "invalid": 0}
        for r in results:
            counts[r.status] = counts.get(r.status, 0) + 1
        log.info(
            "admin: imported %s keys: %d added, %d duplicate, %d invalid",
            provider,
            counts["added"],
            counts["duplicate"],
            counts["invalid"],
        )
        return Reply(
            200,
            {
                "results": [
                    {"input": r.input, "status": r.status, "id": r.id, "message": r.message}
                    for r in results
                ],
                **counts,
            },
        )

    def _provider_field(self, doc: dict[str, Any]) -> str:
        provider = doc.get("provider")
        if not isinstance(provider, str) or not provider:
            raise bad("provider", "required")
        if provider not in self.gw.providers:
            raise bad("provider", f"no provider named {provider!r}")
        return provider

    async def patch_key(self, req: Request, key_id_s: str) -> Reply:
        key_id = int(key_id_s)
        doc = await req.json()
        fields: dict[str, Any] = {}
        for name, value in doc.items():
            if name == "label":
                if value is None:
                    value = ""
                if not isinstance(value, str) or len(value) > LABEL_MAX:
                    raise bad("label", f"must be a string of at most {LABEL_MAX} characters")
            elif name == "status":
                if value not in ("active", "disabled"):
                    raise bad("status", "must be 'active' or 'disabled'")
            elif name in ("rpm", "max_conn"):
                high = KEY_LIMIT_MAX[name]
                if isinstance(value, float) and value.is_integer():
                    value = int(value)  # JSON's 5.0 is the integer 5
                if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= high:
                    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
                    raise bad(name, f"must be a whole number ≥ 0 and ≤ {high}, got {shown}")
            else:
                raise bad(name, "unknown field (label, status, rpm, max_conn)")
            fields[name] = value
        rec = await self._record(key_id)
        entry = self._entry(rec.provider, key_id)
        if "status" in fields:
            fields["until"] = 0.0
        elif entry is not None:
            # Write the health memory holds along with the change, so the store (and the
            # change feed every instance follows) never carries an older state back.
            fields.update(status=entry.status, until=entry.until, last_error=entry.last_error)
        if fields:
            try:
                updated = await self.gw.store.update_key(key_id, **fields)
            except ValueError as exc:
                raise ApiError(400, str(exc), "invalid_value") from None
            if updated is None:
                raise ApiError(404, f"no key with id {key_id}", "not_found")
            rec = updated
            log.info("admin: key %s#%d changed: %s", rec.masked, key_id, ", ".join(sorted(doc)))
        now = time.time()
        # Applies label and per-key limits in place and tells the other instances at once.
        entry = self.gw.adopt_key(rec)
        if entry is not None and "status" in doc:
            self.gw.providers[rec.provider].pool.set_status(key_id, doc["status"], 0.0)
        return Reply(200, _entry_view(entry, now) if entry else self._key_view(rec, now))

    async def delete_key(self, req: Request, key_id_s: str) -> Reply:
        key_id = int(key_id_s)
        deleted = await self.gw.store.delete_key(key_id)
        self.gw.forget_key(key_id)  # from this moment, whatever the store said
        if not deleted:
            raise ApiError(404, f"no key with id {key_id}", "not_found")
        log.info("admin: deleted key #%d", key_id)
        return Reply(200, {"deleted": key_id})

    async def test_key(self, req: Request, key_id_s: str) -> Reply:
        key_id = int(key_id_s)
        entry = self.gw.find_key(key_id)
        if entry is None:
            rec = await self._record(key_id)
            entry = self.gw.adopt_key(rec)
            if entry is None:
                raise ApiError(
                    400, f"provider {rec.provider!r} is not configured here", "unknown_provider"
                )
        return Reply(200, await self._test_entry(self.gw.providers[entry.provider], entry))

    async def _test_entry(self, rt: ProviderRuntime, entry: KeyEntry) -> dict[str, Any]:
        """Probe the upstream with the key and apply what it proved (the same operation as
        `keygate keys test`), in the store and at once in this gateway's pool."""
        assert self.gw.session is not None
        result = await run_key_test(
            self.gw.session, self.gw.store, rt.cfg, entry.id, entry.secret, entry.status
        )
        status, latency_ms, error, ok = result.status, result.latency_ms, result.error, result.ok
        if result.health is not None:
            log.info(
                "admin: key %s#%d tested %s: now %s",
                entry.masked,
                entry.id,
                status,
                result.health[0],
            )
            rt.pool.set_status(entry.id, *result.health)
        if result.save_error:
            log.warning("key #%d: could not save its test result: %s", entry.id, result.save_error)
        return {
            "id": entry.id,
            "ok": ok,
            "status": status,
            "latency_ms": round(latency_ms, 1),
            "error": error or None,
            "key": _entry_view(entry, time.time()),
        }

    # --- stats, config, requests -------------------------------------------------------------
    async def stats(self, req: Request) -> Reply:
        gw = self.gw
        stored = await gw.store.provider_totals()
        names = ("requests", "ok", "err_4xx", "err_5xx", "tokens_in", "tokens_out")
        totals: dict[str, Any] = dict.fromkeys(names, 0)
        key_totals: dict[str, int] = dict.fromkeys(KEY_STATUSES, 0)
        key_totals["total"] = 0
        totals["in_flight"] = totals["queued"] = 0
        providers: dict[str, Any] = {}
        for name, rt in gw.providers.items():
            base = stored.get(name, {})
            unflushed = [a - b for a, b in zip(rt.stats.counters(), rt.stats.flushed, strict=True)]
            counters = {n: int(base.get(n, 0)) + d for n, d in zip(names, unflushed, strict=True)}
            counts = rt.pool.counts()
            keys = {**counts, "total": sum(counts.values())}
            if not keys["total"] and not counters["requests"]:
                continue
            snap = rt.admission.snapshot()
            providers[name] = {
                **counters,
                "keys": keys,
                "in_flight": snap["in_flight"],
                "max_conn": snap["max_conn"],
                "queued": snap["queued"],
                "queue": snap["queue"],
                "timeline": rt.stats.timeline(120),
            }
            for n in names:
                totals[n] += counters[n]
            for state, n in keys.items():
                key_totals[state] = key_totals.get(state, 0) + n
            totals["in_flight"] += snap["in_flight"]
            totals["queued"] += snap["queued"]
        totals["keys"] = key_totals
        doc = {
            "uptime_s": round(time.time() - gw.started_at, 1),
            "since": gw.started_at,
            "state": gw.state_info(),
            "totals": totals,
            "providers": providers,
        }
        return Reply(200, doc)

    async def metrics(self, req: Request) -> Reply:
        """Prometheus text format; scrape with the admin password as a bearer token."""
        from keygate import metrics

        if self._metrics is None:
            self._metrics = metrics.registry_for(self.gw)
        return Reply(200, metrics.render(self._metrics), content_type=metrics.CONTENT_TYPE)

    async def health(self, req: Request) -> Reply:
        """`/healthz` with admin credentials: the details (without them app.py answers)."""
        from keygate import health

        return Reply(200, health.details(self.gw))

    async def config(self, req: Request) -> Reply:
        s = self.gw.settings
        doc = {
            "version": __version__,
            "default_provider": self.gw.default_provider,
            "admin_path": s.admin_path,
            "proxy_auth": bool(self.gw.passwords),
            "store": s.store_description,
            "shared_state": self.gw.state_info()["state"],
            "flush_interval_ms": s.flush_interval_ms,
            "providers": {
                name: {"default_model": rt.cfg.default_model, "force_model": rt.cfg.force_model}
                for name, rt in self.gw.providers.items()
            },
        }
        return Reply(200, doc)

    async def put_default_model(self, req: Request) -> Reply:
        doc = await req.json()
        unknown = sorted(set(doc) - {"model", "provider", "force"})
        if unknown:
            raise bad(unknown[0], "unknown field (model, provider, force)")
        provider = doc.get("provider")
        if provider is None or provider == "":
            provider = self.gw.default_provider
        if not isinstance(provider, str) or provider not in self.gw.providers:
            raise bad("provider", f"no provider named {provider!r}")
        if "model" not in doc:  # a bare PUT must not clear the default model
            raise bad("model", "required (an empty string clears the default model)")
        model = doc.get("model")
        if model is None:
            model = ""
        if not isinstance(model, str) or len(model) > 200:
            raise bad("model", "must be a string (empty clears the default model)")
        fields: dict[str, Any] = {"default_model": model.strip()}
        if "force" in doc:
            if not isinstance(doc["force"], bool):
                raise bad("force", "must be true or false")
            fields["force_model"] = doc["force"]
        try:
            cfg = await self.gw.update_provider(provider, fields)
        except ValueError as exc:
            raise bad("model", str(exc)) from None
        log.info(
            "admin: %s default model %r (force %s)", provider, cfg.default_model, cfg.force_model
        )
        doc = {
            "provider": provider,
            "default_model": cfg.default_model,
            "force_model": cfg.force_model,
        }
        return Reply(200, doc)

    async def requests(self, req: Request) -> Reply:
        q = req.query
        provider = q.get("provider") or None
        ring = self.gw.recent
        limit = min(_int_param(q, "limit", REQUESTS_LIMIT_DEFAULT, 0, None), ring.maxlen or 1000)
        wanted = _status_filter(q.get("status") or "")
        out: list[dict[str, Any]] = []
        for record in reversed(ring.copy()):
            if len(out) >= limit:
                break
            if provider and record.provider != provider:
                continue
            if wanted is not None and not wanted(record.status):
                continue
            out.append(record.public())
        return Reply(200, {"requests": out})

    async def openapi(self, req: Request) -> Reply:
        return Reply(200, openapi_document(self.gw.providers))


# --- helpers ----------------------------------------------------------------------------------
def _effective_status(entry: KeyEntry, now: float) -> str:
    """A cooling key whose time is up is active, even before the pool notices."""
    if entry.status == "cooling" and entry.until <= now:
        return "active"
    return entry.status


def _entry_view(entry: KeyEntry, now: float) -> dict[str, Any]:
    view = entry.public(now)
    status = _effective_status(entry, now)
    if status != view["status"]:
        view["status"] = status
        view["cooldown_until"] = None
    return view


def _status_filter(raw: str) -> Callable[[int], bool] | None:
    raw = raw.strip().lower()
    if not raw:
        return None
    if raw == "error":
        return lambda s: s >= 400
    if re.fullmatch(r"[1-5]xx", raw):
        low = int(raw[0]) * 100
        return lambda s: low <= s < low + 100
    if re.fullmatch(r"\d{3}", raw):
        code = int(raw)
        return lambda s: s == code
    raise bad("status", "must be a status code (429), a class (2xx, 4xx, 5xx) or 'error'")


def _int_param(query: dict[str, str], name: str, default: int, lo: int, hi: int | None) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw, 10)
    except ValueError:
        raise bad(name, f"must be a whole number, got {raw[:40]!r}") from None
    if value < lo or (hi is not None and value > hi):
        raise bad(name, f"must be ≥ {lo}" + (f" and ≤ {hi}" if hi is not None else ""))
    return value


def _is_https(scope: dict[str, Any]) -> bool:
    if scope.get("scheme") == "https":
        return True
    return any(
        name == b"x-forwarded-proto" and value.strip().lower() == b"https"
        for name, value in scope["headers"]
    )


def _refused(wait: float, message: str) -> ApiError:
    """A wrong admin password: 401, or 429 once the failed-attempt throttle says so."""
    if wait > 0:
        return ApiError(
            429,
            f"too many wrong admin passwords; retry in {math.ceil(wait)}s",
            "too_many_attempts",
            headers=retry_after_headers(wait),
        )
    return _unauthorized(message)


def _unauthorized(message: str) -> ApiError:
    return ApiError(
        401,
        message,
        "unauthorized",
        headers=[(b"www-authenticate", b'Bearer realm="keygate admin"')],
    )


def _error_reply(err: ApiError) -> Reply:
    body = {
        "error": {
            "message": err.message,
            "type": _ERROR_TYPES.get(err.status, "api_error"),
            "code": err.code,
            "param": err.param,
        }
    }
    return Reply(err.status, body, err.headers)
