"""/api/stats, /api/requests, /metrics and /healthz (details): read-only views of the running
gateway's traffic."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

from keygate.admin.components import REQUEST_RECORD, STATS
from keygate.admin.http import Reply, Request, bad, not_found
from keygate.admin.schema import INT, STR, Query, QueryInt, arr, obj
from keygate.admin.table import op
from keygate.clients import ops as client_ops
from keygate.observe.logs import log
from keygate.runtime.gateway import Gateway
from keygate.runtime.views import (
    COUNTER_NAMES,
    key_counts,
    load_quota_views,
    provider_counters,
    provider_quota,
)
from keygate.store.base import KEY_STATUSES

REQUESTS_LIMIT_DEFAULT = 100
_TAG = "status"
REQUESTS_LIMIT = QueryInt("limit", REQUESTS_LIMIT_DEFAULT, "at most this many")
# The `status` filter: a code (429), a class (2xx) or "error"; the handler reads it with this.
STATUS_FILTER = re.compile(r"\s*([0-9]{3}|[1-5][xX][xX]|[eE][rR][rR][oO][rR])?\s*")


class StatsRoutes:
    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        self._metrics: Any = None

    @op(
        "GET",
        "/api/stats",
        "All-time counters, key states, load and a 120 s timeline",
        tag=_TAG,
        answer=STATS,
        answer_text="stats",
    )
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
                "affinity": dict(rt.stats.affinity),
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
            "cache": gw.cache.snapshot(),
        }
        return Reply(200, doc)

    @op(
        "DELETE",
        "/api/cache",
        "Empty the response cache (SPEC §19): every provider's entries, or one's",
        tag=_TAG,
        answer=obj({"removed": INT}),
        answer_text="how many entries were removed",
        params=(Query("provider", STR, "only this provider"),),
        errors=(404,),
    )
    async def clear_cache(self, req: Request) -> Reply:
        provider = req.query.get("provider") or None
        if provider is not None and provider not in self.gw.providers:
            raise not_found(f"no provider named {provider!r}")
        removed = self.gw.cache.clear(provider)
        log.info("admin: response cache emptied (%s): %d entries", provider or "all", removed)
        return Reply(200, {"removed": removed})

    @op(
        "GET",
        "/api/requests",
        "Recent requests, newest first (a bounded ring in memory)",
        tag=_TAG,
        answer=obj({"requests": arr(REQUEST_RECORD)}),
        answer_text="records",
        params=(
            Query("provider", STR, "only this provider"),
            Query(
                "status",
                {"type": "string", "pattern": f"^{STATUS_FILTER.pattern}$"},
                "a code (429), a class (2xx, 4xx, 5xx) or error (≥ 400)",
            ),
            REQUESTS_LIMIT,
        ),
        errors=(400,),
    )
    async def requests(self, req: Request) -> Reply:
        q = req.query
        provider = q.get("provider") or None
        ring = self.gw.recent
        limit = min(REQUESTS_LIMIT.read(q), ring.maxlen or 1000)
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

    @op(
        "GET",
        "/metrics",
        "Prometheus metrics (text format): requests by outcome, tokens, keys by state, "
        "in-flight, queued, rejected, shared-state form",
        tag=_TAG,
        answer=STR,
        answer_text="Prometheus text exposition format 0.0.4",
        media="text/plain",
    )
    async def metrics(self, req: Request) -> Reply:
        """Prometheus text format; scrape with the admin password as a bearer token."""
        from keygate.runtime import metrics

        if self._metrics is None:
            self._metrics = metrics.registry_for(self.gw)
        for rt in self.gw.providers.values():
            await load_quota_views(rt)
        return Reply(200, metrics.render(self._metrics), content_type=metrics.CONTENT_TYPE)

    @op(
        "GET",
        "/healthz",
        "The health check's details",
        tag=_TAG,
        answer=obj(),
        answer_text="details",
        # Not part of the admin API's document: /healthz is the public health check (app.py
        # answers it without credentials); only its details come through here.
        listed=False,
    )
    async def health(self, req: Request) -> Reply:
        """`/healthz` with admin credentials: the details (without them app.py answers)."""
        from keygate.runtime import health

        return Reply(200, health.details(self.gw))


def _status_filter(raw: str) -> Callable[[int], bool] | None:
    m = STATUS_FILTER.fullmatch(raw)
    if m is None:
        raise bad("status", "must be a status code (429), a class (2xx, 4xx, 5xx) or 'error'")
    value = (m.group(1) or "").lower()
    if not value:
        return None
    if value == "error":
        return lambda s: s >= 400
    if value.endswith("xx"):
        low = int(value[0]) * 100
        return lambda s: low <= s < low + 100
    code = int(value)
    return lambda s: s == code
