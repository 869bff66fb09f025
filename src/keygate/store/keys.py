"""Provider keys in the store: one key added, read, searched, changed, deleted; their health.

Secrets are sealed by the cipher in force before they reach the database and unsealed on the
way out; duplicates are found by fingerprint, so nothing is decrypted to find one. Every write
moves the change feed (`store.feed`). Batch imports are `store.imports`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from keygate.masking import mask
from keygate.store import feed
from keygate.store.checks import (
    MAX_ERROR_LEN,
    check_fields,
    check_provider,
    check_source,
    check_status,
    check_time,
)
from keygate.store.driver import Db, HealthRow, Rollback, Row, one
from keygate.store.encryption import guard_plain_writes
from keygate.store.keyinput import check_secret
from keygate.store.records import DuplicateKey, InvalidKey, KeyRecord
from keygate.store.state import State

BIG_RESULT = 2000  # rows above which hashing/decryption moves off the event loop
KEY_COLUMNS = """
    k.id, k.provider, k.secret, k.masked, k.label, k.status, k.until, k.last_error, k.source,
    k.created_at, COALESCE(s.use_count, 0), COALESCE(s.last_used, 0), COALESCE(s.ok, 0),
    COALESCE(s.err_4xx, 0), COALESCE(s.err_5xx, 0), COALESCE(s.tokens_in, 0),
    COALESCE(s.tokens_out, 0), k.rpm, k.max_conn, k.rph, k.rpd, k.tpm, k.tph, k.tpd,
    COALESCE(d.day, 0), COALESCE(d.requests, 0), COALESCE(d.tokens, 0), k.tier, k.weight
"""
KEY_SELECT = (
    f"SELECT {KEY_COLUMNS} FROM keys k LEFT JOIN key_stats s ON s.key_id = k.id"
    " LEFT JOIN key_days d ON d.key_id = k.id"
)


def record_from_row(row: Row, unseal: Callable[[str], str]) -> KeyRecord:
    """A `KEY_SELECT` row as a KeyRecord, the secret decrypted with `unseal`."""
    return KeyRecord(
        id=row[0],
        provider=row[1],
        secret=unseal(row[2]),
        masked=row[3],
        label=row[4],
        status=row[5],
        until=row[6],
        last_error=row[7],
        source=row[8],
        created_at=row[9],
        use_count=row[10],
        last_used=row[11],
        ok=row[12],
        err_4xx=row[13],
        err_5xx=row[14],
        tokens_in=row[15],
        tokens_out=row[16],
        rpm=row[17],
        max_conn=row[18],
        rph=row[19],
        rpd=row[20],
        tpm=row[21],
        tph=row[22],
        tpd=row[23],
        day=row[24],
        day_requests=row[25],
        day_tokens=row[26],
        tier=row[27],
        weight=row[28],
    )


def record(state: State, row: Row) -> KeyRecord:
    return record_from_row(row, state.cipher.unseal)


async def records(state: State, db: Db, rows: list[Row]) -> list[KeyRecord]:
    if len(rows) > BIG_RESULT:  # decryption of many keys: keep the event loop free
        return await db.offload(lambda: [record(state, r) for r in rows])
    return [record(state, r) for r in rows]


def like_pattern(q: str) -> str:
    escaped = q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


async def add_key(
    state: State, provider: str, secret: str, label: str = "", source: str = "api"
) -> KeyRecord:
    provider = check_provider(provider)
    check_source(source)
    if not isinstance(label, str):
        raise ValueError("label must be text")
    secret = secret.strip() if isinstance(secret, str) else ""
    why = check_secret(secret)
    if why:
        raise InvalidKey(f"the key is not valid: {why}")
    cipher = state.cipher
    fingerprint = cipher.fingerprint(secret)
    sealed = cipher.seal(secret)

    async def tx(db: Db) -> KeyRecord:
        seq = await feed.bump(db)
        await guard_plain_writes(state, db)
        existing = await db.fetchval(
            "SELECT id FROM keys WHERE provider = $1 AND fingerprint = $2",
            provider,
            fingerprint,
        )
        if existing is not None:
            raise DuplicateKey(f"{provider} already has this key (id {existing})")
        key_id = await db.fetchval(
            "INSERT INTO keys (provider, secret, fingerprint, masked, label, source,"
            " created_at, updated_seq) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
            provider,
            sealed,
            fingerprint,
            mask(secret),
            label,
            source,
            time.time(),
            seq,
        )
        row = await db.fetchrow(f"{KEY_SELECT} WHERE k.id = $1", key_id)
        return record(state, one(row, "key just added"))

    return await state.driver.write(tx)


async def load_keys(state: State, provider: str | None = None) -> list[KeyRecord]:
    async def fn(db: Db) -> list[KeyRecord]:
        if provider is None:
            rows = await db.fetch(f"{KEY_SELECT} ORDER BY k.id")
        else:
            rows = await db.fetch(f"{KEY_SELECT} WHERE k.provider = $1 ORDER BY k.id", provider)
        return await records(state, db, rows)

    return await state.driver.plain(fn)


async def get_keys(state: State, ids: list[int]) -> list[KeyRecord]:
    wanted = sorted({int(i) for i in ids})
    if not wanted:
        return []

    async def fn(db: Db) -> list[KeyRecord]:
        return await records(state, db, await state.driver.key_rows(db, KEY_SELECT, wanted))

    return await state.driver.plain(fn)


async def list_keys(
    state: State,
    provider: str | None = None,
    status: str | None = None,
    q: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[KeyRecord], int]:
    dialect = state.driver.dialect
    args: list[Any] = []

    def param(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    conds: list[str] = []
    if provider:
        conds.append(f"k.provider = {param(provider)}")
    if status:
        conds.append(f"k.status = {param(status)}")
    q = (q or "").strip()
    fingerprint = state.cipher.fingerprint(q) if q and not check_secret(q) else ""
    match: list[str] = []
    if q:
        # Label or masked form, case-insensitive; or the whole secret pasted in, matched
        # through its fingerprint so nothing is decrypted.
        pattern = param(like_pattern(q))
        match = [f"k.{col} {dialect.ilike} {pattern} ESCAPE '\\'" for col in ("label", "masked")]
    source = dialect.search_from if q else "keys k"
    n = len(args)
    page = f" ORDER BY k.id DESC LIMIT ${n + 1} OFFSET ${n + 2}"

    async def read(db: Db) -> tuple[list[KeyRecord], int]:
        where = list(conds)
        if q:
            exact = (
                await db.fetch("SELECT id FROM keys WHERE fingerprint = $1", fingerprint)
                if fingerprint
                else []
            )
            ids = [f"k.id IN ({','.join(str(int(r[0])) for r in exact)})"] if exact else []
            where.append(f"({' OR '.join(match + ids)})")
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        total = await db.fetchval(f"SELECT COUNT(*) FROM {source}{clause}", *args)
        # The page's ids from the narrow indexes first, then only those rows in full.
        rows = await db.fetch(
            f"{KEY_SELECT} WHERE k.id IN (SELECT k.id FROM {source}{clause}{page})"
            " ORDER BY k.id DESC",
            *args,
            max(0, int(limit)),
            max(0, int(offset)),
        )
        return await records(state, db, rows), int(total)

    return await state.driver.read(read)


async def update_key(state: State, key_id: int, fields: dict[str, Any]) -> KeyRecord | None:
    values = check_fields(fields)
    key_id = int(key_id)

    async def tx(db: Db) -> KeyRecord | None:
        if values:
            seq = await feed.bump(db)
            sets = ", ".join(f"{name} = ${i}" for i, name in enumerate(values, start=3))
            done = await db.fetchval(
                f"UPDATE keys SET {sets}, updated_seq = $2 WHERE id = $1 RETURNING id",
                key_id,
                seq,
                *values.values(),
            )
            if done is None:
                raise Rollback(None)
        row = await db.fetchrow(f"{KEY_SELECT} WHERE k.id = $1", key_id)
        return None if row is None else record(state, row)

    return await state.driver.write(tx)


async def delete_key(state: State, key_id: int) -> bool:
    key_id = int(key_id)

    async def tx(db: Db) -> bool:
        seq = await feed.bump(db)
        if await db.fetchval("DELETE FROM keys WHERE id = $1 RETURNING id", key_id) is None:
            raise Rollback(False)
        await db.execute("DELETE FROM key_stats WHERE key_id = $1", key_id)
        await db.execute("DELETE FROM key_days WHERE key_id = $1", key_id)
        await feed.tombstone(state, db, key_id, seq)
        return True

    return await state.driver.write(tx)


async def save_health(state: State, updates: list[tuple[int, str, float, str]]) -> None:
    latest: dict[int, tuple[str, float, str]] = {}  # the last update of a key wins
    for key_id, status, until, last_error in updates:
        latest[int(key_id)] = (
            check_status(status),
            check_time("until", until),
            str(last_error or "")[:MAX_ERROR_LEN],
        )
    if not latest:
        return
    rows: list[HealthRow] = [(i, *latest[i]) for i in sorted(latest)]  # one lock order

    async def tx(db: Db) -> None:
        seq = await feed.bump(db)
        # Rows whose health did not change are skipped: echoes of a change another instance
        # made (and that we learnt from the feed) do not bounce back into it.
        if not await state.driver.update_health(db, seq, rows):
            raise Rollback(None)  # nothing changed: the feed does not move

    await state.driver.write(tx)
