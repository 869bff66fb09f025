"""Counters: per key, per provider and per quota day, flushed by every instance as deltas.

Deltas are added, never written over, so several instances' flushes add up; one row per key
and per provider in each flush, sorted, so concurrent flushes lock rows in the same order.
Counters do not move the change feed (readers merge them at their own flush).
"""

from __future__ import annotations

from keygate.store.driver import PROVIDER_COUNTERS, Db, KeyDelta, ProviderDelta, Row
from keygate.store.state import State


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


async def add_counters(
    state: State,
    key_deltas: list[tuple[int, int, int, int, int, int, int, float]],
    provider_deltas: dict[str, tuple[int, int, int, int, int, int]],
) -> None:
    # One row per key (a statement may not update a row twice), summed; sorted, so
    # concurrent flushes lock rows in the same order.
    per_key: dict[int, KeyDelta] = {}
    for d in key_deltas:
        row = _key_delta(d)
        seen = per_key.get(row[0])
        per_key[row[0]] = row if seen is None else _merge(seen, row)  # rare: one delta per key
    keys = [per_key[k] for k in sorted(per_key)]
    providers = [_provider_delta(name, provider_deltas[name]) for name in sorted(provider_deltas)]
    if not keys and not providers:
        return

    async def tx(db: Db) -> None:
        await state.driver.add_counter_rows(db, keys, providers)

    await state.driver.write(tx)


async def add_day_counters(state: State, rows: list[tuple[int, float, int, int]]) -> None:
    clean = sorted((int(k), float(d), int(r), int(t)) for k, d, r, t in rows)
    if not clean:
        return
    upsert = state.driver.dialect.day_upsert

    async def tx(db: Db) -> None:
        await db.executemany(upsert, clean)

    await state.driver.write(tx)


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
