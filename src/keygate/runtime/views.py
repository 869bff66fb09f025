"""The public shapes (SPEC §7) of keys and providers, written once for the admin API, the CLI
and the page: a key as the running gateway holds it (`KeyEntry`, live health and counters) or
as the store has it (`KeyRecord`) looks the same, and never shows its secret.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from keygate.control.keypool import KeyEntry
from keygate.control.quota import WINDOWS, empty_view
from keygate.runtime.counters import unflushed
from keygate.store.base import KeyRecord

if TYPE_CHECKING:
    from keygate.runtime.provider import ProviderRuntime

COUNTER_NAMES = ("requests", "ok", "err_4xx", "err_5xx", "tokens_in", "tokens_out")
_TIMED = frozenset({"cooling", "exhausted", "invalid"})  # states with a cooldown_until


def effective_status(status: str, until: float, now: float) -> str:
    """A cooling key whose time is up is active, even before the pool notices."""
    if status == "cooling" and until <= now:
        return "active"
    return status


def key_view(key: KeyEntry | KeyRecord, now: float, pool: Any = None) -> dict[str, Any]:
    """`pool`: the key's live pool, whose windows give its `quota` (SPEC §12)."""
    status = effective_status(key.status, key.until, now)
    if pool is not None and isinstance(key, KeyEntry):
        quota = pool.quota_view(key, now)
    else:
        quota = empty_view()
        for window, limit in zip(WINDOWS, key.limits(), strict=True):
            quota[window]["limit"] = limit or None
    return {
        "id": key.id,
        "provider": key.provider,
        "masked": key.masked,
        "label": key.label,
        "status": status,
        "use_count": key.use_count,
        "last_used": key.last_used or None,
        "created_at": key.created_at,
        "last_error": key.last_error or None,
        "cooldown_until": key.until if status in _TIMED else None,
        "source": key.source,
        "inflight": key.inflight if isinstance(key, KeyEntry) else 0,
        "ok": key.ok,
        "err_4xx": key.err_4xx,
        "err_5xx": key.err_5xx,
        "tokens_in": key.tokens_in,
        "tokens_out": key.tokens_out,
        "rpm": key.rpm,
        "rph": key.rph,
        "rpd": key.rpd,
        "tpm": key.tpm,
        "tph": key.tph,
        "tpd": key.tpd,
        "max_conn": key.max_conn,
        "tier": key.tier,
        "weight": key.weight,
        "quota": quota,
    }


def key_counts(rt: ProviderRuntime) -> dict[str, int]:
    counts = rt.pool.counts()
    return {**counts, "total": sum(counts.values())}


async def load_quota_views(rt: ProviderRuntime, entries: Any = None) -> None:
    """Read the fleet's quota windows (Redis) of `entries` (default: every key) before the
    views below show them."""
    pool = rt.pool
    await pool.load_views(list(pool.entries.values()) if entries is None else entries)


def provider_quota(rt: ProviderRuntime, now: float) -> dict[str, dict[str, Any]]:
    """The provider's quota windows over its keys that have a limit in them: used and limit
    summed, the earliest reset (the admin page's provider gauges)."""
    out: dict[str, dict[str, Any]] = {}
    pool = rt.pool
    for entry in list(pool.entries.values()):
        if entry.quota is None or entry.status == "disabled":
            continue
        for window, row in pool.quota_view(entry, now).items():
            if row["limit"] is None:
                continue
            agg = out.setdefault(window, {"used": 0, "limit": 0, "reset_at": None, "keys": 0})
            agg["used"] += min(row["used"] or 0, row["limit"])
            agg["limit"] += row["limit"]
            agg["keys"] += 1
            reset = row["reset_at"]
            if reset is not None and (agg["reset_at"] is None or reset < agg["reset_at"]):
                agg["reset_at"] = reset
    return out


def provider_view(rt: ProviderRuntime) -> dict[str, Any]:
    snap = rt.admission.snapshot()
    return {
        **rt.cfg.public(),
        "keys": key_counts(rt),
        "in_flight": snap["in_flight"],
        "queued": snap["queued"],
        "paused_for_s": snap["paused_for_s"],
        "quota": provider_quota(rt, time.time()),
        # SPEC §16: each egress proxy's health, its password masked ([]: direct)
        "proxies": rt.egress.public() if rt.egress is not None else [],
    }


def provider_counters(stored: dict[str, Any], rt: ProviderRuntime) -> dict[str, int]:
    """The store's totals (every instance's flushes) plus what this one counted since."""
    return {
        name: int(stored.get(name, 0)) + delta
        for name, delta in zip(COUNTER_NAMES, unflushed(rt.stats), strict=True)
    }
