"""Client keys in the store (SPEC §13): their records, their usage per period, the feed.

Every write to `clients` moves the change feed, so each instance reloads its client table at the
next poll (or at once, when Redis carries the announcement). Deletion keeps the row, marked: the
feed then reaches every instance without tombstones, and the usage stays countable.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from keygate.store import feed
from keygate.store.client_fields import clean
from keygate.store.driver import Db, Rollback, Row, one
from keygate.store.state import State

_COLUMNS = (
    "id, name, key_hash, masked, enabled, rpm, rpd, tpd, monthly_tokens, providers, models,"
    " expires_at, created_at"
)
_SELECT = f"SELECT {_COLUMNS} FROM clients WHERE deleted = 0"
USAGE_FIELDS = ("requests", "tokens_in", "tokens_out", "errors")
# (client id, period, requests, tokens in, tokens out, errors, last used)
ClientDelta = tuple[int, str, int, int, int, int, float]


@dataclass(slots=True)
class ClientRecord:
    id: int
    name: str
    key_hash: str
    masked: str
    enabled: bool = True
    rpm: int = 0
    rpd: int = 0
    tpd: int = 0
    monthly_tokens: int = 0
    providers: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    expires_at: float = 0.0
    created_at: float = 0.0


def _record(row: Row) -> ClientRecord:
    return ClientRecord(
        int(row[0]),
        str(row[1]),
        str(row[2]),
        str(row[3]),
        bool(row[4]),
        int(row[5]),
        int(row[6]),
        int(row[7]),
        int(row[8]),
        json.loads(row[9]),
        json.loads(row[10]),
        float(row[11]),
        float(row[12]),
    )


def _column(name: str, value: Any) -> Any:
    if name in ("providers", "models"):
        return json.dumps(value)
    if name == "enabled":
        return 1 if value else 0
    return value


async def add_client(state: State, key_hash: str, masked: str, doc: dict[str, Any]) -> ClientRecord:
    values = clean(doc, creating=True)
    now = time.time()

    async def tx(db: Db) -> ClientRecord:
        seq = await feed.bump(db)
        names = ["key_hash", "masked", "created_at", "updated_seq", *values]
        args = [key_hash, masked, now, seq, *(_column(k, v) for k, v in values.items())]
        marks = ", ".join(f"${i}" for i in range(1, len(args) + 1))
        new_id = await db.fetchval(
            f"INSERT INTO clients ({', '.join(names)}) VALUES ({marks}) RETURNING id", *args
        )
        row = await db.fetchrow(f"{_SELECT} AND id = $1", new_id)
        return _record(one(row, "client just added"))

    return await state.driver.write(tx)


async def load_clients(state: State) -> list[ClientRecord]:
    async def fn(db: Db) -> list[Row]:
        return await db.fetch(f"{_SELECT} ORDER BY id")

    return [_record(r) for r in await state.driver.plain(fn)]


async def get_client(state: State, client_id: int) -> ClientRecord | None:
    async def fn(db: Db) -> Row | None:
        return await db.fetchrow(f"{_SELECT} AND id = $1", int(client_id))

    row = await state.driver.plain(fn)
    return None if row is None else _record(row)


async def update_client(state: State, client_id: int, doc: dict[str, Any]) -> ClientRecord | None:
    values = clean(doc, creating=False)
    client_id = int(client_id)

    async def tx(db: Db) -> ClientRecord | None:
        if values:
            seq = await feed.bump(db)
            sets = ", ".join(f"{name} = ${i}" for i, name in enumerate(values, start=3))
            done = await db.fetchval(
                f"UPDATE clients SET {sets}, updated_seq = $2"
                " WHERE id = $1 AND deleted = 0 RETURNING id",
                client_id,
                seq,
                *(_column(k, v) for k, v in values.items()),
            )
            if done is None:
                raise Rollback(None)
        row = await db.fetchrow(f"{_SELECT} AND id = $1", client_id)
        return None if row is None else _record(row)

    return await state.driver.write(tx)


async def delete_client(state: State, client_id: int) -> bool:
    client_id = int(client_id)

    async def tx(db: Db) -> bool:
        seq = await feed.bump(db)
        done = await db.fetchval(
            "UPDATE clients SET deleted = 1, enabled = 0, updated_seq = $2"
            " WHERE id = $1 AND deleted = 0 RETURNING id",
            client_id,
            seq,
        )
        if done is None:
            raise Rollback(False)
        return True

    return await state.driver.write(tx)


def usage_rows(deltas: list[ClientDelta]) -> list[tuple[Any, ...]]:
    """One row per (client, period), summed and sorted (one lock order), for `add_usage`."""
    merged: dict[tuple[int, str], tuple[int, int, int, int, float]] = {}
    for cid, period, req, tin, tout, err, last in deltas:
        key = (int(cid), str(period))
        a, b, c, d, e = merged.get(key, (0, 0, 0, 0, 0.0))
        merged[key] = (a + int(req), b + int(tin), c + int(tout), d + int(err), max(e, float(last)))
    return [(cid, period, *merged[(cid, period)]) for cid, period in sorted(merged)]


async def add_usage(state: State, db: Db, rows: list[tuple[Any, ...]]) -> None:
    """Add `usage_rows` inside the caller's write transaction."""
    greatest = state.driver.dialect.greatest
    await db.executemany(
        "INSERT INTO client_stats (client_id, period, requests, tokens_in, tokens_out,"
        " errors, last_used) VALUES ($1, $2, $3, $4, $5, $6, $7)"
        " ON CONFLICT (client_id, period) DO UPDATE SET"
        " requests = client_stats.requests + EXCLUDED.requests,"
        " tokens_in = client_stats.tokens_in + EXCLUDED.tokens_in,"
        " tokens_out = client_stats.tokens_out + EXCLUDED.tokens_out,"
        " errors = client_stats.errors + EXCLUDED.errors,"
        f" last_used = {greatest}(client_stats.last_used, EXCLUDED.last_used)",
        rows,
    )


async def add_client_counters(state: State, deltas: list[ClientDelta]) -> None:
    """Additive, like key counters; one row per (client, period), sorted (one lock order)."""
    rows = usage_rows(deltas)
    if not rows:
        return

    async def tx(db: Db) -> None:
        await add_usage(state, db, rows)

    await state.driver.write(tx)


async def client_usage(state: State, periods: list[str]) -> dict[int, dict[str, dict[str, Any]]]:
    """{client id: {period: {requests, tokens_in, tokens_out, errors, last_used}}}."""
    if not periods:
        return {}
    marks = ", ".join(f"${i}" for i in range(1, len(periods) + 1))

    async def fn(db: Db) -> list[Row]:
        return await db.fetch(
            "SELECT client_id, period, requests, tokens_in, tokens_out, errors, last_used"
            f" FROM client_stats WHERE period IN ({marks})",
            *periods,
        )

    out: dict[int, dict[str, dict[str, Any]]] = {}
    for cid, period, *values in await state.driver.plain(fn):
        doc = dict(zip((*USAGE_FIELDS, "last_used"), values, strict=True))
        out.setdefault(int(cid), {})[str(period)] = doc
    return out
