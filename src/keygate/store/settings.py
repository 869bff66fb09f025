"""Settings changed at run time: provider overrides, meta values (the admin token, the default
model, ...), the model table (aliases and groups) and revoked admin sessions.

All but the revocations move the change feed, so every instance picks them up at its next
poll. The encryption parameters live in meta too, but only `store.encryption` writes them.
"""

from __future__ import annotations

import json
import time
from typing import Any

from keygate.store import feed
from keygate.store.checks import check_model_name, check_provider, check_session_id, check_time
from keygate.store.crypto import CRYPTO_META
from keygate.store.driver import Db, Rollback, Row
from keygate.store.state import State

_UPSERT_META = (
    "INSERT INTO meta (name, value, updated_seq) VALUES ($1, $2, $3)"
    " ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value, updated_seq = EXCLUDED.updated_seq"
)

# provider overrides


async def get_provider_overrides(state: State) -> dict[str, dict[str, Any]]:
    async def fn(db: Db) -> list[Row]:
        return await db.fetch("SELECT name, data FROM provider_overrides")

    out: dict[str, dict[str, Any]] = {}
    for name, data in await state.driver.plain(fn):
        value = json.loads(data)
        if value:
            out[name] = value
    return out


async def set_provider_override(state: State, name: str, fields: dict[str, Any]) -> None:
    name = check_provider(name)
    try:
        json.dumps(fields)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"provider override for {name} is not JSON: {exc}") from exc
    for_update = state.driver.dialect.for_update

    async def tx(db: Db) -> None:
        seq = await feed.bump(db)
        data = await db.fetchval(
            f"SELECT data FROM provider_overrides WHERE name = $1{for_update}", name
        )
        merged = json.loads(data) if data else {}
        for field, value in fields.items():
            if value is None:
                merged.pop(field, None)
            else:
                merged[field] = value
        await db.execute(
            "INSERT INTO provider_overrides (name, data, updated_seq) VALUES ($1, $2, $3)"
            " ON CONFLICT (name) DO UPDATE SET data = EXCLUDED.data,"
            " updated_seq = EXCLUDED.updated_seq",
            name,
            json.dumps(merged, sort_keys=True),
            seq,
        )

    await state.driver.write(tx)


# meta


async def get_meta(state: State, name: str) -> str | None:
    async def fn(db: Db) -> Any:
        return await db.fetchval("SELECT value FROM meta WHERE name = $1", name)

    value = await state.driver.plain(fn)
    return None if value is None else str(value)


async def set_meta(state: State, name: str, value: str) -> None:
    if name in CRYPTO_META:
        raise ValueError(f"meta {name} is managed by the store")
    if not isinstance(value, str):
        raise ValueError(f"meta {name} must be text")

    async def tx(db: Db) -> None:
        seq = await feed.bump(db)
        await db.execute(_UPSERT_META, name, value, seq)

    await state.driver.write(tx)


# the model table (aliases and groups)


async def get_model_routes(state: State) -> dict[str, Any]:
    async def fn(db: Db) -> list[Row]:
        return await db.fetch("SELECT name, data FROM model_routes ORDER BY name")

    return {name: json.loads(data) for name, data in await state.driver.plain(fn)}


async def set_model_route(state: State, name: str, spec: Any) -> None:
    name = check_model_name(name)
    try:
        data = json.dumps(spec, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"model route {name} is not JSON: {exc}") from exc

    async def tx(db: Db) -> None:
        seq = await feed.bump(db)
        await db.execute(
            "INSERT INTO model_routes (name, data, updated_seq) VALUES ($1, $2, $3)"
            " ON CONFLICT (name) DO UPDATE SET data = EXCLUDED.data,"
            " updated_seq = EXCLUDED.updated_seq",
            name,
            data,
            seq,
        )
        await feed.models_moved(db, seq)

    await state.driver.write(tx)


async def delete_model_route(state: State, name: str) -> bool:
    name = check_model_name(name)

    async def tx(db: Db) -> bool:
        if await db.fetchval("SELECT 1 FROM model_routes WHERE name = $1", name) is None:
            raise Rollback(False)
        seq = await feed.bump(db)
        await db.execute("DELETE FROM model_routes WHERE name = $1", name)
        await feed.models_moved(db, seq)
        return True

    return bool(await state.driver.write(tx))


# admin sessions


async def revoke_session(state: State, session_id: str, expires_at: float) -> None:
    check_session_id(session_id)
    until = check_time("expires_at", expires_at)
    greatest = state.driver.dialect.greatest

    async def tx(db: Db) -> None:
        await db.execute("DELETE FROM revoked_sessions WHERE expires_at <= $1", time.time())
        await db.execute(
            "INSERT INTO revoked_sessions (session_id, expires_at) VALUES ($1, $2)"
            " ON CONFLICT (session_id) DO UPDATE SET expires_at ="
            f" {greatest}(revoked_sessions.expires_at, EXCLUDED.expires_at)",
            session_id,
            until,
        )

    await state.driver.write(tx)


async def session_revoked(state: State, session_id: str) -> bool:
    check_session_id(session_id)

    async def fn(db: Db) -> Any:
        return await db.fetchval(
            "SELECT 1 FROM revoked_sessions WHERE session_id = $1 AND expires_at > $2",
            session_id,
            time.time(),
        )

    return await state.driver.plain(fn) is not None
