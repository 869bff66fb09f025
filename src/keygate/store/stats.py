"""Counters: per key, per provider and per quota day, flushed by every instance as deltas.

Deltas are added, never written over, so several instances' flushes add up; one row per key
and per provider in each flush, sorted, so concurrent flushes lock rows in the same order.
Counters do not move the change feed (readers merge them at their own flush).

A flush (`add_flush`) writes all its counters in one transaction together with a mark: the
writer's name and the batch number, in `meta` (outside the feed). When the database fails while
the batch is on its way (a failover cuts the connection during COMMIT), the writer cannot know
whether it was committed; `flush_stored` asks, once the store is back, so the deltas are sent
again only if they were not stored: counted once, never twice.
"""

from __future__ import annotations

import time
from typing import Any

from keygate.store import clients
from keygate.store.clients import ClientDelta
from keygate.store.driver import PROVIDER_COUNTERS, Db, KeyDelta, ProviderDelta, Row
from keygate.store.state import State

MARK_PREFIX = "flush."  # meta rows `flush.<writer>` = "<epoch s, 10 digits> <batch>"
MARK_TTL_S = 30 * 86400  # a writer silent this long has no unsettled batch: its mark goes
_UPSERT_MARK = (
    "INSERT INTO meta (name, value, updated_seq) VALUES ($1, $2, 0)"
    " ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value"
)


def _key_delta(d: tuple[int, int, int, int, int, int, int, float]) -> KeyDelta:
    return (
        int(d[0]),
        int(d[1]),
        int(d[2]),
        int(d[3]),
        int(d[4]),
        int(d[5]),
        int(d[6]),
        float(d[7]),
    )


def _merge(a: KeyDelta, b: KeyDelta) -> KeyDelta:
    return (
        a[0],
        a[1] + b[1],
        a[2] + b[2],
        a[3] + b[3],
        a[4] + b[4],
        a[5] + b[5],
        a[6] + b[6],
        max(a[7], b[7]),
    )


def _provider_delta(name: str, d: tuple[int, int, int, int, int, int]) -> ProviderDelta:
    return (name, int(d[0]), int(d[1]), int(d[2]), int(d[3]), int(d[4]), int(d[5]))


def _counter_rows(
    key_deltas: list[tuple[int, int, int, int, int, int, int, float]],
    provider_deltas: dict[str, tuple[int, int, int, int, int, int]],
) -> tuple[list[KeyDelta], list[ProviderDelta]]:
    # One row per key (a statement may not update a row twice), summed; sorted, so
    # concurrent flushes lock rows in the same order.
    per_key: dict[int, KeyDelta] = {}
    for d in key_deltas:
        row = _key_delta(d)
        seen = per_key.get(row[0])
        per_key[row[0]] = row if seen is None else _merge(seen, row)  # rare: one delta per key
    keys = [per_key[k] for k in sorted(per_key)]
    providers = [_provider_delta(name, provider_deltas[name]) for name in sorted(provider_deltas)]
    return keys, providers


def _day_rows(rows: list[tuple[int, float, int, int]]) -> list[tuple[int, float, int, int]]:
    return sorted((int(k), float(d), int(r), int(t)) for k, d, r, t in rows)


async def add_counters(
    state: State,
    key_deltas: list[tuple[int, int, int, int, int, int, int, float]],
    provider_deltas: dict[str, tuple[int, int, int, int, int, int]],
) -> None:
    keys, providers = _counter_rows(key_deltas, provider_deltas)
    if not keys and not providers:
        return

    async def tx(db: Db) -> None:
        await state.driver.add_counter_rows(db, keys, providers)

    await state.driver.write(tx)


async def add_day_counters(state: State, rows: list[tuple[int, float, int, int]]) -> None:
    clean = _day_rows(rows)
    if not clean:
        return
    upsert = state.driver.dialect.day_upsert

    async def tx(db: Db) -> None:
        await db.executemany(upsert, clean)

    await state.driver.write(tx)


async def add_flush(
    state: State,
    writer: str,
    batch: int,
    key_deltas: list[tuple[int, int, int, int, int, int, int, float]],
    provider_deltas: dict[str, tuple[int, int, int, int, int, int]],
    days: list[tuple[int, float, int, int]],
    client_deltas: list[ClientDelta],
) -> None:
    keys, providers = _counter_rows(key_deltas, provider_deltas)
    day_rows = _day_rows(days)
    usage = clients.usage_rows(client_deltas)
    upsert = state.driver.dialect.day_upsert
    now = int(time.time())

    async def tx(db: Db) -> None:
        if keys or providers:
            await state.driver.add_counter_rows(db, keys, providers)
        if day_rows:
            await db.executemany(upsert, day_rows)
        if usage:
            await clients.add_usage(state, db, usage)
        await db.execute(_UPSERT_MARK, MARK_PREFIX + writer, f"{now:010d} {batch}")
        await db.execute(
            "DELETE FROM meta WHERE name LIKE 'flush.%' AND value < $1",
            f"{now - MARK_TTL_S:010d}",
        )

    await state.driver.write(tx)


async def flush_stored(state: State, writer: str, batch: int) -> bool:
    async def fn(db: Db) -> Any:
        return await db.fetchval("SELECT value FROM meta WHERE name = $1", MARK_PREFIX + writer)

    value = await state.driver.plain(fn)
    return value is not None and str(value).partition(" ")[2] == str(batch)


async def provider_totals(state: State) -> dict[str, dict[str, int]]:
    async def fn(db: Db) -> list[Row]:
        return await db.fetch(
            f"SELECT provider, {', '.join(PROVIDER_COUNTERS)} FROM provider_stats"
        )

    rows = await state.driver.plain(fn)
    return {r[0]: dict(zip(PROVIDER_COUNTERS, r[1:], strict=True)) for r in rows}


async def key_counts(state: State) -> dict[str, dict[str, int]]:
    async def fn(db: Db) -> list[Row]:
        return await db.fetch(
            "SELECT provider, status, COUNT(*) FROM keys GROUP BY provider, status"
        )

    out: dict[str, dict[str, int]] = {}
    for provider, status, n in await state.driver.plain(fn):
        out.setdefault(provider, {})[status] = int(n)
    return out
