"""/api/stats, /api/requests, /metrics, /healthz (details) and /api/openapi.json: read-only
views of the running gateway's traffic."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

from keygate.admin.http import Reply, Request, Route, bad, int_param, route
from keygate.admin.openapi import document as openapi_document
from keygate.clients import ops as client_ops
from keygate.gateway import Gateway
from keygate.store.base import KEY_STATUSES
from keygate.views import (
    COUNTER_NAMES,
    key_counts,
    load_quota_views,
    provider_counters,
    provider_quota,
)

REQUESTS_LIMIT_DEFAULT = 100


class StatsRoutes:
    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        self._metrics: Any = None

    def routes(self) -> list[Route]:
        return [
            route("GET", r"/api/stats", self.stats),
            route("GET", r"/api/requests", self.requests),
            route("GET", r"/api/openapi\.json", self.openapi),
            route("GET", r"/metrics", self.metrics),
            route("GET", r"/healthz", self.health),
        ]

    async def stats(self, req: Request) -> Reply:
        gw = self.gw
        stored = await gw.store.provider_totals()
        totals: dict[str, Any] = dict.fromkeys(COUNTER_NAMES, 0)
        key_totals: dict[str, int] = dict.fromkeys(KEY_STATUSES, 0)
        key_totals["total"] = 0
        totals["in_flight"] = totals["queued"] = 0
        providers: dict[str, Any] = {}
        for name, rt in gw.providers.items():
            counters = provider_counters(stored.get(name, {}), rt)
            keys = key_counts(rt)
            if not keys["total"] and not counters["requests"]:
                continue
            snap = rt.admission.snapshot()
            await load_quota_views(rt)
            providers[name] = {
                **counters,
                "keys": keys,
                "in_flight": snap["in_flight"],
                "max_conn": snap["max_conn"],
                "queued": snap["queued"],
                "queue": snap["queue"],
                "timeline": rt.stats.timeline(120),
                "quota": provider_quota(rt, time.time()),
            }
            for n in COUNTER_NAMES:
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
            "clients": {
                str(c["id"]): {
                    "name": c["name"],
                    "status": c["status"],
                    **c["usage"],
                    "last_used": c["last_used"],
                }
                for c in await client_ops.listing(gw.store, gw.clients, time.time())
            },
        }
        return Reply(200, doc)

    async def requests(self, req: Request) -> Reply:
        q = req.query
        provider = q.get("provider") or None
        ring = self.gw.recent
        limit = min(int_param(q, "limit", REQUESTS_LIMIT_DEFAULT, 0, None), ring.maxlen or 1000)
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

    async def metrics(self, req: Request) -> Reply:
        """Prometheus text format; scrape with the admin password as a bearer token."""
        from keygate import metrics

        if self._metrics is None:
            self._metrics = metrics.registry_for(self.gw)
        for rt in self.gw.providers.values():
            await load_quota_views(rt)
        return Reply(200, metrics.render(self._metrics), content_type=metrics.CONTENT_TYPE)

    async def health(self, req: Request) -> Reply:
        """`/healthz` with admin credentials: the details (without them app.py answers)."""
        from keygate import health

        return Reply(200, health.details(self.gw))

    async def openapi(self, req: Request) -> Reply:
        return Reply(200, openapi_document(self.gw.providers))


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
