"""The admin JSON API under /api (docs/admin-api.md): keys, providers, clients, stats, config,
requests, models.

A raw ASGI callable over one route table (admin/table.py) gathered from the route modules
(session, keys, providers, stats, models, clients), with the request/response helpers of
admin/http.py; the OpenAPI document is made from the same table (admin/openapi.py). Every write
goes to the store first (so a crash loses no admin change) and is then applied to the running
gateway at once (key pools, limits, default model).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

from keygate.admin.auth import AdminAuth
from keygate.admin.clients import ClientRoutes
from keygate.admin.credentials import AdminCredentials
from keygate.admin.http import ApiError, Reply, Request, error_reply, send_reply
from keygate.admin.keys import KeyRoutes
from keygate.admin.models import ModelRoutes
from keygate.admin.openapi import document
from keygate.admin.providers import ProviderRoutes
from keygate.admin.schema import obj
from keygate.admin.session import SessionRoutes
from keygate.admin.stats import StatsRoutes
from keygate.admin.table import match, op, table
from keygate.http.errors import retry_after_headers
from keygate.observe.logs import log
from keygate.runtime.gateway import Gateway
from keygate.store.base import StoreUnavailable

STORE_RETRY_S = 1.0  # a failover takes seconds: the page and scripts may try again soon


class AdminAPI:
    """`AdminAPI(gateway, credentials)` is mounted by app.py for every path under /api."""

    def __init__(self, gateway: Gateway, credentials: AdminCredentials) -> None:
        self.gw = gateway
        self.auth = AdminAuth(gateway, credentials)
        self.session = SessionRoutes(self.auth)
        keys = KeyRoutes(gateway)
        self.routes = table(
            self.session,
            ProviderRoutes(gateway, keys),
            keys,
            StatsRoutes(gateway),
            ModelRoutes(gateway),
            ClientRoutes(gateway),
            self,
        )

    @op(
        "GET",
        "/api/openapi.json",
        "This document",
        tag="status",
        answer=obj(),
        answer_text="OpenAPI 3.1",
    )
    async def openapi(self, req: Request) -> Reply:
        return Reply(200, document(self.routes, self.gw.providers))

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        method: str = scope["method"]
        path: str = scope["path"]
        if len(path) > 1:
            path = path.rstrip("/") or "/"
        try:
            route, args, allowed = match(self.routes, method, path)
            if route is None or not route.op.public:
                await self.session.authorize(scope)
            if route is None:
                if allowed:
                    raise ApiError(
                        405,
                        f"{method} is not allowed on {path}",
                        "method_not_allowed",
                        headers=[(b"allow", ", ".join(allowed).encode())],
                    )
                raise ApiError(404, f"no such admin API route: {path}", "not_found")
            query = dict(parse_qsl(scope.get("query_string", b"").decode("utf-8", "replace")))
            reply = await route.handler(Request(scope, receive, route.op.limit, query), *args)
        except ApiError as err:
            reply = error_reply(err)
        except StoreUnavailable as exc:
            # The write did not happen (or its outcome is unknown): never reported as done.
            log.warning("admin API %s %s: %s", method, path, exc)
            reply = error_reply(
                ApiError(
                    503,
                    "the store is unavailable (a database restart or failover); try again",
                    "store_unavailable",
                    headers=retry_after_headers(STORE_RETRY_S),
                )
            )
        except Exception as exc:
            log.exception("admin API %s %s failed: %s", method, path, type(exc).__name__)
            reply = error_reply(ApiError(500, "internal error; see the gateway log", "internal"))
        await send_reply(send, scope, reply)
