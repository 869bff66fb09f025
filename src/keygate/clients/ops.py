"""Client operations shared by the admin API and the CLI: create (the key made and shown
once), list with usage, change, delete. Both write through the store; the API then applies
the change to the running gateway (`Gateway.clients_changed`)."""

from __future__ import annotations

from typing import Any

from keygate.clients.periods import PERIODS
from keygate.clients.registry import Client, ClientRegistry
from keygate.clients.secret import key_hash, mask, new_key
from keygate.store.base import Store
from keygate.store.clients import USAGE_FIELDS, ClientRecord


async def create(store: Store, doc: dict[str, Any]) -> tuple[ClientRecord, str]:
    """A new client and its key: the only time the key exists outside its holder's hands."""
    key = new_key()
    rec = await store.add_client(key_hash(key), mask(key), doc)
    return rec, key


def status(rec: ClientRecord | Client, now: float) -> str:
    if not rec.enabled:
        return "disabled"
    if rec.expires_at and now >= rec.expires_at:
        return "expired"
    return "active"


def view(
    rec: ClientRecord,
    stored: dict[str, dict[str, Any]],
    live: Client | None,
    now: float,
) -> dict[str, Any]:
    """A client as answers show it: policy, status, usage today / this month / all time (the
    store's flushed rows plus what this instance has not flushed yet), last use, and the last
    hour's requests per minute when this instance served it."""
    p = PERIODS.at(now)
    pending = live.usage.pending if live is not None else {}
    usage: dict[str, dict[str, int]] = {}
    last_used = float(stored.get("all", {}).get("last_used", 0.0))
    for label, period in (("today", p.day), ("month", p.month), ("all", "all")):
        row = stored.get(period, {})
        extra = pending.get(period, [0, 0, 0, 0])
        usage[label] = {f: int(row.get(f, 0)) + extra[i] for i, f in enumerate(USAGE_FIELDS)}
    if live is not None:
        last_used = max(last_used, live.usage.last_used)
    return {
        "id": rec.id,
        "name": rec.name,
        "masked": rec.masked,
        "status": status(rec, now),
        "enabled": rec.enabled,
        "rpm": rec.rpm or None,
        "rpd": rec.rpd or None,
        "tpd": rec.tpd or None,
        "monthly_tokens": rec.monthly_tokens or None,
        "providers": rec.providers,
        "models": rec.models,
        "expires_at": rec.expires_at or None,
        "created_at": rec.created_at,
        "last_used": last_used or None,
        "usage": usage,
        "timeline": live.usage.timeline(now) if live is not None else [],
    }


async def listing(
    store: Store, registry: ClientRegistry | None, now: float
) -> list[dict[str, Any]]:
    p = PERIODS.at(now)
    records = await store.load_clients()
    stored = await store.client_usage(["all", p.day, p.month])
    by_id = registry.by_id if registry is not None else {}
    return [view(r, stored.get(r.id, {}), by_id.get(r.id), now) for r in records]


async def one(
    store: Store, registry: ClientRegistry | None, rec: ClientRecord, now: float
) -> dict[str, Any]:
    p = PERIODS.at(now)
    stored = await store.client_usage(["all", p.day, p.month])
    live = registry.by_id.get(rec.id) if registry is not None else None
    return view(rec, stored.get(rec.id, {}), live, now)
