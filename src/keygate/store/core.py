"""The store core: every store operation written once, over a per-backend driver.

Argument checks, the change feed (one seq per writing transaction, taken first and stamped on
the rows it touches; tombstones for deletions; a write that changes nothing rolls back so the
feed does not move), batch-import planning, counter and health batching, provider overrides,
meta and session revocations live here, as SQL with `$1` placeholders run through the
driver's sessions (`store.driver`). A backend subclasses `SqlStore` and fills in the driver.
"""

from __future__ import annotations

import json
import time
from typing import Any

from keygate.store.base import (
    KEY_SELECT,
    MAX_ERROR_LEN,
    Changes,
    DuplicateKey,
    ImportResult,
    InvalidKey,
    KeyRecord,
    check_fields,
    check_model_name,
    check_number,
    check_provider,
    check_secret,
    check_session_id,
    check_source,
    check_status,
    like_pattern,
    mask,
    plan_import,
)
from keygate.store.clients import ClientStore
from keygate.store.crypto import CRYPTO_META
from keygate.store.driver import (
    BIG_RESULT,
    PROVIDER_COUNTERS,
    Db,
    KeyDelta,
    ProviderDelta,
    Rollback,
)

_UPSERT_META = (
    "INSERT INTO meta (name, value, updated_seq) VALUES ($1, $2, $3)"
    " ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value, updated_seq = EXCLUDED.updated_seq"
)


class SqlStore(ClientStore):
    """Every `Store` operation over the driver; SQLite and PostgreSQL subclass it."""

    # keys

    async def add_key(
        self, provider: str, secret: str, label: str = "", source: str = "api"
    ) -> KeyRecord:
        provider = check_provider(provider)
        check_source(source)
        if not isinstance(label, str):
            raise ValueError("label must be text")
        secret = secret.strip() if isinstance(secret, str) else ""
        why = check_secret(secret)
        if why:
            raise InvalidKey(f"the key is not valid: {why}")
        cipher = self._cipher
        fingerprint = cipher.fingerprint(secret)
        sealed = cipher.seal(secret)

        async def tx(db: Db) -> KeyRecord:
            seq = await self._bump(db)
            await self._guard_plain_writes(db)
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
            return self._record(await db.fetchrow(f"{KEY_SELECT} WHERE k.id = $1", key_id))

        return await self._write(tx)

    async def add_keys(
        self, provider: str, secrets: list[str], source: str = "api"
    ) -> list[ImportResult]:
        provider = check_provider(provider)
        check_source(source)
        secrets = list(secrets)
        cipher = self._cipher

        def prepare() -> tuple[Any, list[str]]:
            plan = plan_import(secrets, cipher.fingerprint)
            return plan, [cipher.seal(token) for token in plan.tokens.values()]  # `first` order

        if len(secrets) > BIG_RESULT:  # hashing/encrypting many keys: keep the event loop free
            plan, sealed = await self._offload(prepare)
        else:
            plan, sealed = prepare()
        results, first = plan.results, plan.first
        masked = [results[index].input for index in first.values()]

        async def tx(db: Db) -> dict[str, int]:
            seq = await self._bump(db)  # taken first: the duplicate check cannot go stale
            await self._guard_plain_writes(db)
            fps = list(first)
            ids = await self._find_fingerprints(db, provider, fps)
            for fp in ids:
                results[first[fp]].message = "already stored"
            keep = [i for i, fp in enumerate(fps) if fp not in ids]
            if not keep:
                raise Rollback(ids)  # nothing new: the feed does not move
            new_fps = [fps[i] for i in keep]
            rows = [(sealed[i], fps[i], masked[i]) for i in keep]
            for fp, key_id in await self._insert_keys(db, provider, source, seq, rows):
                ids[fp] = key_id
                result = results[first[fp]]
                result.status, result.message = "added", ""
            missing = [fp for fp in new_fps if fp not in ids]
            if missing:  # only if a writer bypassed the feed lock
                for fp, key_id in (await self._find_fingerprints(db, provider, missing)).items():
                    ids[fp] = key_id
                    results[first[fp]].message = "already stored"
            return ids

        ids = await self._write(tx) if first else {}
        await self._after_import(sum(1 for r in results if r.status == "added"))
        return plan.finish(ids)

    async def load_keys(self, provider: str | None = None) -> list[KeyRecord]:
        async def fn(db: Db) -> list[KeyRecord]:
            if provider is None:
                rows = await db.fetch(f"{KEY_SELECT} ORDER BY k.id")
            else:
                rows = await db.fetch(f"{KEY_SELECT} WHERE k.provider = $1 ORDER BY k.id", provider)
            return await self._records(db, rows)

        return await self._plain(fn)

    async def get_keys(self, ids: list[int]) -> list[KeyRecord]:
        wanted = sorted({int(i) for i in ids})
        if not wanted:
            return []

        async def fn(db: Db) -> list[KeyRecord]:
            return await self._records(db, await self._key_rows(db, wanted))

        return await self._plain(fn)

    async def list_keys(
        self,
        provider: str | None = None,
        status: str | None = None,
        q: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[KeyRecord], int]:
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
        fingerprint = self._cipher.fingerprint(q) if q and not check_secret(q) else ""
        match: list[str] = []
        if q:
            # Label or masked form, case-insensitive; or the whole secret pasted in, matched
            # through its fingerprint so nothing is decrypted.
            pattern = param(like_pattern(q))
            match = [f"k.{col} {self.ILIKE} {pattern} ESCAPE '\\'" for col in ("label", "masked")]
        source = self.SEARCH_FROM if q else "keys k"
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
            return await self._records(db, rows), int(total)

        return await self._read(read)

    async def update_key(self, key_id: int, **fields: Any) -> KeyRecord | None:
        values = check_fields(fields)
        key_id = int(key_id)

        async def tx(db: Db) -> KeyRecord | None:
            if values:
                seq = await self._bump(db)
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
            return None if row is None else self._record(row)

        return await self._write(tx)

    async def delete_key(self, key_id: int) -> bool:
        key_id = int(key_id)

        async def tx(db: Db) -> bool:
            seq = await self._bump(db)
            if await db.fetchval("DELETE FROM keys WHERE id = $1 RETURNING id", key_id) is None:
                raise Rollback(False)
            await db.execute("DELETE FROM key_stats WHERE key_id = $1", key_id)
            await db.execute("DELETE FROM key_days WHERE key_id = $1", key_id)
            now = time.time()
            await db.execute(
                "INSERT INTO deleted_keys (key_id, seq, deleted_at) VALUES ($1, $2, $3)"
                " ON CONFLICT (key_id) DO UPDATE SET seq = EXCLUDED.seq,"
                " deleted_at = EXCLUDED.deleted_at",
                key_id,
                seq,
                now,
            )
            pruned = await db.fetch(
                "DELETE FROM deleted_keys WHERE deleted_at < $1 RETURNING seq",
                now - self.tombstone_ttl_s,
            )
            if pruned:
                await db.execute(
                    f"UPDATE change_feed SET pruned_seq = {self.GREATEST}(pruned_seq, $1)"
                    " WHERE id = 1",
                    max(int(r[0]) for r in pruned),
                )
            return True

        return await self._write(tx)

    async def save_health(self, updates: list[tuple[int, str, float, str]]) -> None:
        latest: dict[int, tuple[str, float, str]] = {}  # the last update of a key wins
        for key_id, status, until, last_error in updates:
            latest[int(key_id)] = (
                check_status(status),
                float(check_number("until", until, integer=False)),
                str(last_error or "")[:MAX_ERROR_LEN],
            )
        if not latest:
            return
        rows = [(i, *latest[i]) for i in sorted(latest)]  # one lock order for every writer

        async def tx(db: Db) -> None:
            seq = await self._bump(db)
            # Rows whose health did not change are skipped: echoes of a change another instance
            # made (and that we learnt from the feed) do not bounce back into it.
            if not await self._update_health(db, seq, rows):
                raise Rollback(None)  # nothing changed: the feed does not move

        await self._write(tx)

    # counters

    async def add_counters(
        self,
        key_deltas: list[tuple[int, int, int, int, int, int, int, float]],
        provider_deltas: dict[str, tuple[int, int, int, int, int, int]],
    ) -> None:
        # One row per key (a statement may not update a row twice), summed; sorted, so
        # concurrent flushes lock rows in the same order.
        per_key: dict[int, KeyDelta] = {}
        for d in key_deltas:
            key_id = int(d[0])
            row: KeyDelta = (
                key_id,
                int(d[1]),
                int(d[2]),
                int(d[3]),
                int(d[4]),
                int(d[5]),
                int(d[6]),
                float(d[7]),
            )
            seen = per_key.get(key_id)
            if seen is not None:  # rare: the flusher sends one delta per key
                row = (
                    key_id,
                    *(a + b for a, b in zip(seen[1:7], row[1:7], strict=True)),
                    max(seen[7], row[7]),
                )  # type: ignore[assignment]
            per_key[key_id] = row
        keys = [per_key[k] for k in sorted(per_key)]
        providers: list[ProviderDelta] = [
            (name, *(int(v) for v in provider_deltas[name]))  # type: ignore[misc]
            for name in sorted(provider_deltas)
        ]
        if not keys and not providers:
            return

        async def tx(db: Db) -> None:
            await self._add_counter_rows(db, keys, providers)

        await self._write(tx)

    async def add_day_counters(self, rows: list[tuple[int, float, int, int]]) -> None:
        clean = sorted((int(k), float(d), int(r), int(t)) for k, d, r, t in rows)
        if not clean:
            return

        async def tx(db: Db) -> None:
            await db.executemany(self.DAY_UPSERT, clean)

        await self._write(tx)

    async def provider_totals(self) -> dict[str, dict[str, int]]:
        async def fn(db: Db) -> list[Any]:
            return await db.fetch(
                f"SELECT provider, {', '.join(PROVIDER_COUNTERS)} FROM provider_stats"
            )

        rows = await self._plain(fn)
        return {r[0]: dict(zip(PROVIDER_COUNTERS, r[1:], strict=True)) for r in rows}

    async def key_counts(self) -> dict[str, dict[str, int]]:
        async def fn(db: Db) -> list[Any]:
            return await db.fetch(
                "SELECT provider, status, COUNT(*) FROM keys GROUP BY provider, status"
            )

        out: dict[str, dict[str, int]] = {}
        for provider, status, n in await self._plain(fn):
            out.setdefault(provider, {})[status] = int(n)
        return out

    # provider overrides and meta

    async def get_provider_overrides(self) -> dict[str, dict[str, Any]]:
        async def fn(db: Db) -> list[Any]:
            return await db.fetch("SELECT name, data FROM provider_overrides")

        out = {}
        for name, data in await self._plain(fn):
            value = json.loads(data)
            if value:
                out[name] = value
        return out

    async def set_provider_override(self, name: str, fields: dict[str, Any]) -> None:
        name = check_provider(name)
        try:
            json.dumps(fields)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"provider override for {name} is not JSON: {exc}") from exc

        async def tx(db: Db) -> None:
            seq = await self._bump(db)
            data = await db.fetchval(
                f"SELECT data FROM provider_overrides WHERE name = $1{self.FOR_UPDATE}", name
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

        await self._write(tx)

    async def get_meta(self, name: str) -> str | None:
        async def fn(db: Db) -> Any:
            return await db.fetchval("SELECT value FROM meta WHERE name = $1", name)

        value = await self._plain(fn)
        return None if value is None else str(value)

    async def set_meta(self, name: str, value: str) -> None:
        if name in CRYPTO_META:
            raise ValueError(f"meta {name} is managed by the store")
        if not isinstance(value, str):
            raise ValueError(f"meta {name} must be text")

        async def tx(db: Db) -> None:
            seq = await self._bump(db)
            await db.execute(_UPSERT_META, name, value, seq)

        await self._write(tx)

    # the model table (aliases and groups)

    async def get_model_routes(self) -> dict[str, Any]:
        async def fn(db: Db) -> list[Any]:
            return await db.fetch("SELECT name, data FROM model_routes ORDER BY name")

        return {name: json.loads(data) for name, data in await self._plain(fn)}

    async def set_model_route(self, name: str, spec: Any) -> None:
        name = check_model_name(name)
        try:
            data = json.dumps(spec, sort_keys=True)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"model route {name} is not JSON: {exc}") from exc

        async def tx(db: Db) -> None:
            seq = await self._bump(db)
            await db.execute(
                "INSERT INTO model_routes (name, data, updated_seq) VALUES ($1, $2, $3)"
                " ON CONFLICT (name) DO UPDATE SET data = EXCLUDED.data,"
                " updated_seq = EXCLUDED.updated_seq",
                name,
                data,
                seq,
            )
            await db.execute("UPDATE change_feed SET models_seq = $1 WHERE id = 1", seq)

        await self._write(tx)

    async def delete_model_route(self, name: str) -> bool:
        name = check_model_name(name)

        async def tx(db: Db) -> bool:
            if await db.fetchval("SELECT 1 FROM model_routes WHERE name = $1", name) is None:
                raise Rollback(False)
            seq = await self._bump(db)
            await db.execute("DELETE FROM model_routes WHERE name = $1", name)
            await db.execute("UPDATE change_feed SET models_seq = $1 WHERE id = 1", seq)
            return True

        return bool(await self._write(tx))

    # admin sessions

    async def revoke_session(self, session_id: str, expires_at: float) -> None:
        check_session_id(session_id)
        until = float(check_number("expires_at", expires_at, integer=False))

        async def tx(db: Db) -> None:
            await db.execute("DELETE FROM revoked_sessions WHERE expires_at <= $1", time.time())
            await db.execute(
                "INSERT INTO revoked_sessions (session_id, expires_at) VALUES ($1, $2)"
                " ON CONFLICT (session_id) DO UPDATE SET expires_at ="
                f" {self.GREATEST}(revoked_sessions.expires_at, EXCLUDED.expires_at)",
                session_id,
                until,
            )

        await self._write(tx)

    async def session_revoked(self, session_id: str) -> bool:
        check_session_id(session_id)

        async def fn(db: Db) -> Any:
            return await db.fetchval(
                "SELECT 1 FROM revoked_sessions WHERE session_id = $1 AND expires_at > $2",
                session_id,
                time.time(),
            )

        return await self._plain(fn) is not None

    # change feed

    async def changes_since(self, seq: int) -> Changes:
        seq = int(seq)

        async def read(db: Db) -> Changes:
            current, pruned, models_seq = await db.fetchrow(
                "SELECT seq, pruned_seq, models_seq FROM change_feed WHERE id = 1"
            )
            if seq < pruned or seq > current:
                # Deletions before `pruned` are forgotten, or this is another database: hand back
                # every key and ask for a full reload.
                ids = [r[0] for r in await db.fetch("SELECT id FROM keys ORDER BY id")]
                return Changes(
                    current, ids, [], True, full=True, models_changed=True, clients_changed=True
                )
            # Sorted here, not by ORDER BY id: with that, a planner that knows most keys share
            # one seq walks the whole table in id order instead of the updated_seq index.
            key_ids = sorted(
                r[0] for r in await db.fetch("SELECT id FROM keys WHERE updated_seq > $1", seq)
            )
            deleted = sorted(
                r[0] for r in await db.fetch("SELECT key_id FROM deleted_keys WHERE seq > $1", seq)
            )
            providers_changed = bool(
                await db.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM provider_overrides WHERE updated_seq > $1)"
                    " OR EXISTS (SELECT 1 FROM meta WHERE updated_seq > $1)",
                    seq,
                )
            )
            clients_changed = await self._clients_changed(db, seq)
            return Changes(
                current,
                key_ids,
                deleted,
                providers_changed,
                models_changed=models_seq > seq,
                clients_changed=clients_changed,
            )

        return await self._read(read)

    async def current_seq(self) -> int:
        async def fn(db: Db) -> int:
            return int(await db.fetchval("SELECT seq FROM change_feed WHERE id = 1"))

        return await self._plain(fn)
