"""The shared store: PostgreSQL through an asyncpg connection pool.

Same tables, meanings and behaviour as the SQLite store (`store.sqlite`), for fleets of keygate
instances on one database. Differences are only in how concurrency is handled:

- Migrations (`migrations/postgres/NNNN_*.sql`) run at open in one transaction under a
  transaction-level advisory lock, so instances starting together apply each exactly once.
- Change feed: every transaction that writes keys, provider overrides or meta first bumps the one
  `change_feed` row. Its row lock is held until commit, so writers queue on it and seq order is
  commit order: a reader that sees seq S (in one snapshot) sees every write stamped <= S. A write
  that turns out to change nothing rolls back, so the feed does not move.
- Counters are added (`INSERT ... ON CONFLICT DO UPDATE SET x = x + EXCLUDED.x`) without touching
  the feed, so several instances' flushes add up. Deadlocks and serialization failures are retried.
- Bulk work (imports, counter and health batches) is one statement over `unnest` of arrays.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

import asyncpg

from keygate.store.base import (
    KEY_SELECT,
    MAX_ERROR_LEN,
    TOMBSTONE_TTL_S,
    Changes,
    DuplicateKey,
    ImportPlan,
    ImportResult,
    InvalidKey,
    KeyRecord,
    Store,
    StoreError,
    check_fields,
    check_number,
    check_provider,
    check_secret,
    check_session_id,
    check_source,
    check_status,
    like_pattern,
    load_migrations,
    mask,
    plan_import,
    record_from_row,
)
from keygate.store.crypto import (
    CRYPTO_META,
    ERR_KEY_REQUIRED,
    META_VERIFIER,
    Cipher,
    resolve_cipher,
)
from keygate.urls import mask_url

T = TypeVar("T")

CONNECT_TIMEOUT_S = 10.0
POOL_MAX_SIZE = 10
WRITE_ATTEMPTS = 5  # deadlocks / serialization failures are retried this many times in all
ANALYZE_AFTER = 5000  # keys added by one import that warrant fresh planner statistics
BIG_RESULT = 2000  # rows above which decoding (decryption) moves off the event loop
# One advisory lock id for schema changes and the switch to encryption (per database).
_LOCK_ID = int.from_bytes(hashlib.sha256(b"keygate.store.migrate").digest()[:8], "big", signed=True)
_DB_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)

_COUNTERS = ("use_count", "ok", "err_4xx", "err_5xx", "tokens_in", "tokens_out")
_PROVIDER_COUNTERS = ("requests", "ok", "err_4xx", "err_5xx", "tokens_in", "tokens_out")


def describe_dsn(dsn: str) -> str:
    """The DSN with any password masked, for messages."""
    return mask_url(dsn)


class _Rollback(Exception):
    """Raised inside a write to roll it back (nothing changed) and still return `result`."""

    def __init__(self, result: Any) -> None:
        super().__init__("rollback")
        self.result = result


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _count(status: str) -> int:
    """Rows touched, from a command tag such as 'UPDATE 3'."""
    try:
        return int(status.rsplit(" ", 1)[-1])
    except ValueError:
        return 0


class PostgresStore(Store):
    """Store on a PostgreSQL database; any number of instances and CLIs may share it."""

    def __init__(self, dsn: str, secret_key: str = "", max_size: int = POOL_MAX_SIZE) -> None:
        self.dsn = dsn
        self.max_size = max(2, int(max_size))
        self._where = describe_dsn(dsn)
        self._secret_key = secret_key
        self._cipher: Cipher = Cipher()
        self._pool: asyncpg.Pool | None = None
        self.tombstone_ttl_s = TOMBSTONE_TTL_S

    def __repr__(self) -> str:
        return f"PostgresStore({self._where!r})"

    # plumbing

    def _error(self, exc: BaseException) -> StoreError:
        if isinstance(exc, (OSError, TimeoutError)) and not isinstance(exc, asyncpg.PostgresError):
            return StoreError(f"PostgreSQL database {self._where} is unreachable: {_one_line(exc)}")
        return StoreError(f"PostgreSQL database {self._where}: {_one_line(exc)}")

    @contextlib.asynccontextmanager
    async def _conn(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection; driver and server errors become one-line StoreErrors."""
        pool = self._pool
        if pool is None:
            raise StoreError("the store is not open")
        try:
            async with pool.acquire(timeout=CONNECT_TIMEOUT_S) as conn:
                yield conn
        except _DB_ERRORS as exc:
            if self._pool is None:
                raise StoreError("the store is closed") from exc
            raise self._error(exc) from exc

    async def _read(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run `fn(conn)` in one read-only snapshot, so several SELECTs agree."""
        async with (
            self._conn() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            return await fn(conn)

    async def _write(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run `fn(conn)` in one transaction; retried on deadlock or serialization failure.

        `fn` may raise `_Rollback(result)` to roll back and return `result`.
        """
        for attempt in range(WRITE_ATTEMPTS):
            async with self._conn() as conn:
                try:
                    async with conn.transaction():
                        return await fn(conn)
                except _Rollback as rollback:
                    return rollback.result  # type: ignore[no-any-return]
                except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError):
                    if attempt == WRITE_ATTEMPTS - 1:
                        raise
            await asyncio.sleep(0.01 * (attempt + 1))
        raise AssertionError("unreachable")

    @staticmethod
    async def _bump(conn: asyncpg.Connection) -> int:
        """Next change-feed seq; first statement of every feed-moving write (see module doc)."""
        return int(
            await conn.fetchval("UPDATE change_feed SET seq = seq + 1 WHERE id = 1 RETURNING seq")
        )

    def _record(self, row: Sequence[Any]) -> KeyRecord:
        return record_from_row(row, self._cipher.unseal)

    async def _records(self, rows: list[Any]) -> list[KeyRecord]:
        if len(rows) > BIG_RESULT:  # decryption of many keys: keep the event loop free
            return await asyncio.to_thread(lambda: [self._record(r) for r in rows])
        return [self._record(r) for r in rows]

    async def _guard_plain_writes(self, conn: asyncpg.Connection) -> None:
        """Refuse to add plain secrets after another process switched the db to encryption.

        Call after _bump: the feed lock orders this read after the switch's commit.
        """
        if not self._cipher.encrypted and await conn.fetchval(
            "SELECT 1 FROM meta WHERE name = $1", META_VERIFIER
        ):
            raise StoreError(ERR_KEY_REQUIRED)

    # lifecycle

    async def open(self) -> None:
        if self._pool is not None:
            return
        migrations = load_migrations("postgres")
        pool = await self._create_pool()
        try:
            async with pool.acquire(timeout=CONNECT_TIMEOUT_S) as conn:
                await self._migrate(conn, migrations)
                await self._setup_cipher(conn)
        except _DB_ERRORS as exc:
            pool.terminate()
            raise StoreError(
                f"cannot open PostgreSQL database {self._where}: {_one_line(exc)}"
            ) from exc
        except BaseException:
            pool.terminate()
            raise
        self._pool = pool

    async def _create_pool(self) -> asyncpg.Pool:
        async def connect() -> asyncpg.Pool:
            return await asyncpg.create_pool(
                self.dsn,
                min_size=1,
                max_size=self.max_size,
                timeout=CONNECT_TIMEOUT_S,
                # Short OLTP statements: JIT compilation would only add latency to big imports.
                server_settings={"application_name": "keygate", "jit": "off"},
            )

        try:
            try:
                return await connect()
            except asyncpg.InvalidCatalogNameError:
                await self._create_database()
                return await connect()
        except _DB_ERRORS as exc:
            raise StoreError(
                f"cannot connect to PostgreSQL database {self._where}: {_one_line(exc)}"
            ) from exc

    async def _create_database(self) -> None:
        """Create the DSN's database (like SQLite creates its file) if the role may."""
        parts = urlsplit(self.dsn)
        name = unquote(parts.path.lstrip("/"))
        if not name or "/" in name:
            raise StoreError(f"PostgreSQL database {self._where} does not exist")
        admin_dsn = urlunsplit(parts._replace(path="/postgres"))
        try:
            conn = await asyncpg.connect(admin_dsn, timeout=CONNECT_TIMEOUT_S)
        except _DB_ERRORS as exc:
            raise StoreError(
                f"PostgreSQL database {self._where} does not exist and cannot be created "
                f"({_one_line(exc)}): create it with createdb"
            ) from exc
        try:
            quoted = '"' + name.replace('"', '""') + '"'
            # Another instance may create it at the same moment (either error, by timing).
            with contextlib.suppress(asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
                await conn.execute(f"CREATE DATABASE {quoted}")
        except asyncpg.PostgresError as exc:
            raise StoreError(
                f"PostgreSQL database {self._where} does not exist and cannot be created "
                f"({_one_line(exc)}): create it with createdb"
            ) from exc
        finally:
            await conn.close()

    async def _migrate(
        self, conn: asyncpg.Connection, migrations: list[tuple[int, str, str]]
    ) -> None:
        newest = migrations[-1][0] if migrations else 0

        async def applied() -> int:
            return int(
                await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
            )

        # Read first without the lock: an up-to-date database (the usual case) needs none.
        if await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL"):
            current = await applied()
            self._check_version(current, newest)
            if current == newest:
                return

        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_ID)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
                " applied_at DOUBLE PRECISION NOT NULL)"
            )
            current = await applied()  # again, under the lock: another instance may have migrated
            self._check_version(current, newest)
            for version, name, sql in migrations:
                if version <= current:
                    continue
                await conn.execute(sql)  # simple query protocol: the whole script at once
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
                    version,
                    name,
                    time.time(),
                )

    def _check_version(self, current: int, newest: int) -> None:
        if current > newest:
            raise StoreError(
                f"PostgreSQL database {self._where} has schema version {current}, newer than this "
                f"keygate knows ({newest}): upgrade keygate"
            )

    async def _setup_cipher(self, conn: asyncpg.Connection) -> None:
        async def crypto_meta() -> dict[str, str]:
            rows = await conn.fetch(
                "SELECT name, value FROM meta WHERE name = ANY($1::text[])", list(CRYPTO_META)
            )
            return {r[0]: r[1] for r in rows}

        # The key derivation costs ~50 ms of CPU: off the event loop.
        cipher, to_write = await asyncio.to_thread(
            resolve_cipher, self._secret_key, await crypto_meta()
        )
        if not to_write:
            self._cipher = cipher
            return

        rewritten = 0
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_ID)
            # Hold the feed row: writers (a plain add_key elsewhere) wait for the switch.
            await conn.execute("SELECT seq FROM change_feed WHERE id = 1 FOR UPDATE")
            meta = await crypto_meta()
            if meta.get(META_VERIFIER):  # another instance switched it on meanwhile
                cipher = (await asyncio.to_thread(resolve_cipher, self._secret_key, meta))[0]
            else:
                rows = await conn.fetch("SELECT id, secret FROM keys ORDER BY id")
                old = Cipher()

                def reseal() -> tuple[list[int], list[str], list[str]]:
                    ids, sealed, fps = [], [], []
                    for key_id, stored in rows:
                        secret = old.unseal(stored)
                        ids.append(key_id)
                        sealed.append(cipher.seal(secret))
                        fps.append(cipher.fingerprint(secret))
                    return ids, sealed, fps

                ids, sealed, fps = await asyncio.to_thread(reseal)
                if ids:
                    await conn.execute(
                        "UPDATE keys SET secret = u.secret, fingerprint = u.fp"
                        " FROM unnest($1::bigint[], $2::text[], $3::text[]) AS u(id, secret, fp)"
                        " WHERE keys.id = u.id",
                        ids,
                        sealed,
                        fps,
                    )
                await conn.executemany(
                    "INSERT INTO meta (name, value, updated_seq) VALUES ($1, $2, 0)"
                    " ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
                    list(to_write.items()),
                )
                rewritten = len(ids)
        self._cipher = cipher
        if rewritten:
            # Rewrite the table so the old row versions with plain secrets are not left in its
            # pages (VACUUM FULL needs the table's owner; without it the server only warns).
            with contextlib.suppress(asyncpg.PostgresError):
                await conn.execute("VACUUM FULL keys")

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), timeout=10)
        except (TimeoutError, *_DB_ERRORS):
            pool.terminate()

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

        async def tx(conn: asyncpg.Connection) -> KeyRecord:
            seq = await self._bump(conn)
            await self._guard_plain_writes(conn)
            existing = await conn.fetchval(
                "SELECT id FROM keys WHERE provider = $1 AND fingerprint = $2",
                provider,
                fingerprint,
            )
            if existing is not None:
                raise DuplicateKey(f"{provider} already has this key (id {existing})")
            key_id = await conn.fetchval(
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
            row = await conn.fetchrow(f"{KEY_SELECT} WHERE k.id = $1", key_id)
            return self._record(row)

        return await self._write(tx)

    async def add_keys(
        self, provider: str, secrets: list[str], source: str = "api"
    ) -> list[ImportResult]:
        provider = check_provider(provider)
        check_source(source)
        secrets = list(secrets)
        cipher = self._cipher

        def prepare() -> tuple[ImportPlan, list[str]]:
            plan = plan_import(secrets, cipher.fingerprint)
            return plan, [cipher.seal(token) for token in plan.tokens.values()]  # `first` order

        if len(secrets) > BIG_RESULT:  # hashing/encrypting many keys: keep the event loop free
            plan, sealed = await asyncio.to_thread(prepare)
        else:
            plan, sealed = prepare()
        results, first = plan.results, plan.first
        masked = [results[index].input for index in first.values()]

        async def tx(conn: asyncpg.Connection) -> dict[str, int]:
            seq = await self._bump(conn)  # taken first: the duplicate check cannot go stale
            await self._guard_plain_writes(conn)
            fps = list(first)
            rows = await conn.fetch(
                "SELECT k.fingerprint, k.id FROM unnest($2::text[]) AS u(fp)"
                " JOIN keys k ON k.fingerprint = u.fp AND k.provider = $1",
                provider,
                fps,
            )
            ids = {r[0]: r[1] for r in rows}
            for fp in ids:
                results[first[fp]].message = "already stored"
            keep = [i for i, fp in enumerate(fps) if fp not in ids]
            if not keep:
                raise _Rollback(ids)  # nothing new: the feed does not move
            new_fps = [fps[i] for i in keep]
            inserted = await conn.fetch(
                "INSERT INTO keys (provider, secret, fingerprint, masked, source, created_at,"
                " updated_seq) SELECT $1, u.secret, u.fp, u.masked, $2, $3, $4"
                " FROM unnest($5::text[], $6::text[], $7::text[]) WITH ORDINALITY"
                " AS u(secret, fp, masked, ord) ORDER BY u.ord"
                " ON CONFLICT (fingerprint, provider) DO NOTHING RETURNING fingerprint, id",
                provider,
                source,
                time.time(),
                seq,
                [sealed[i] for i in keep],
                new_fps,
                [masked[i] for i in keep],
            )
            for fp, key_id in inserted:
                ids[fp] = key_id
                result = results[first[fp]]
                result.status, result.message = "added", ""
            if len(inserted) < len(new_fps):  # only if a writer bypassed the feed lock
                missing = [fp for fp in new_fps if fp not in ids]
                for fp, key_id in await conn.fetch(
                    "SELECT fingerprint, id FROM keys WHERE provider = $1"
                    " AND fingerprint = ANY($2::text[])",
                    provider,
                    missing,
                ):
                    ids[fp] = key_id
                    results[first[fp]].message = "already stored"
            return ids

        ids = await self._write(tx) if first else {}
        added = sum(1 for r in results if r.status == "added")
        if added >= ANALYZE_AFTER:
            # Fresh planner statistics now, not at autovacuum's next round: with a table that
            # was empty a moment ago, the next imports' duplicate checks would plan badly.
            with contextlib.suppress(StoreError, asyncpg.PostgresError):
                async with self._conn() as conn:
                    await conn.execute("ANALYZE keys")
        return plan.finish(ids)

    async def load_keys(self, provider: str | None = None) -> list[KeyRecord]:
        async with self._conn() as conn:
            if provider is None:
                rows = await conn.fetch(f"{KEY_SELECT} ORDER BY k.id")
            else:
                rows = await conn.fetch(
                    f"{KEY_SELECT} WHERE k.provider = $1 ORDER BY k.id", provider
                )
        return await self._records(rows)

    async def get_keys(self, ids: list[int]) -> list[KeyRecord]:
        wanted = sorted({int(i) for i in ids})
        if not wanted:
            return []
        async with self._conn() as conn:
            rows = await conn.fetch(
                f"{KEY_SELECT} WHERE k.id = ANY($1::bigint[]) ORDER BY k.id", wanted
            )
        return await self._records(rows)

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
        if q:
            # Label or masked form, case-insensitive; or the whole secret pasted in, matched
            # through its fingerprint so nothing is decrypted.
            pattern = param(like_pattern(q))
            match = [f"k.label ILIKE {pattern}", f"k.masked ILIKE {pattern}"]
            if not check_secret(q):
                match.append(f"k.fingerprint = {param(self._cipher.fingerprint(q))}")
            conds.append(f"({' OR '.join(match)})")
        clause = f" WHERE {' AND '.join(conds)}" if conds else ""
        limit_p, offset_p = param(max(0, int(limit))), param(max(0, int(offset)))

        async def read(conn: asyncpg.Connection) -> tuple[list[Any], int]:
            total = await conn.fetchval(f"SELECT COUNT(*) FROM keys k{clause}", *args[:-2])
            # The page's ids from the narrow indexes first, then only those rows in full.
            rows = await conn.fetch(
                f"{KEY_SELECT} WHERE k.id IN (SELECT k.id FROM keys k{clause}"
                f" ORDER BY k.id DESC LIMIT {limit_p} OFFSET {offset_p}) ORDER BY k.id DESC",
                *args,
            )
            return rows, int(total)

        rows, total = await self._read(read)
        return await self._records(rows), total

    async def update_key(self, key_id: int, **fields: Any) -> KeyRecord | None:
        values = check_fields(fields)
        key_id = int(key_id)

        async def tx(conn: asyncpg.Connection) -> KeyRecord | None:
            if values:
                seq = await self._bump(conn)
                sets = ", ".join(f"{name} = ${i}" for i, name in enumerate(values, start=3))
                done = await conn.fetchval(
                    f"UPDATE keys SET {sets}, updated_seq = $2 WHERE id = $1 RETURNING id",
                    key_id,
                    seq,
                    *values.values(),
                )
                if done is None:
                    raise _Rollback(None)
            row = await conn.fetchrow(f"{KEY_SELECT} WHERE k.id = $1", key_id)
            return None if row is None else self._record(row)

        return await self._write(tx)

    async def delete_key(self, key_id: int) -> bool:
        key_id = int(key_id)

        async def tx(conn: asyncpg.Connection) -> bool:
            seq = await self._bump(conn)
            # key_stats goes with it (ON DELETE CASCADE).
            if await conn.fetchval("DELETE FROM keys WHERE id = $1 RETURNING id", key_id) is None:
                raise _Rollback(False)
            now = time.time()
            await conn.execute(
                "INSERT INTO deleted_keys (key_id, seq, deleted_at) VALUES ($1, $2, $3)"
                " ON CONFLICT (key_id) DO UPDATE SET seq = EXCLUDED.seq,"
                " deleted_at = EXCLUDED.deleted_at",
                key_id,
                seq,
                now,
            )
            pruned = await conn.fetchval(
                "WITH gone AS (DELETE FROM deleted_keys WHERE deleted_at < $1 RETURNING seq)"
                " SELECT MAX(seq) FROM gone",
                now - self.tombstone_ttl_s,
            )
            if pruned is not None:
                await conn.execute(
                    "UPDATE change_feed SET pruned_seq = GREATEST(pruned_seq, $1) WHERE id = 1",
                    pruned,
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
        ids = sorted(latest)  # one lock order for every writer

        async def tx(conn: asyncpg.Connection) -> None:
            seq = await self._bump(conn)
            # Rows whose health did not change are skipped: echoes of a change another instance
            # made (and that we learnt from the feed) do not bounce back into it.
            status = await conn.execute(
                "UPDATE keys k SET status = u.status, until = u.until, last_error = u.err,"
                " updated_seq = $1"
                " FROM unnest($2::bigint[], $3::text[], $4::float8[], $5::text[])"
                " AS u(id, status, until, err)"
                " WHERE k.id = u.id AND (k.status IS DISTINCT FROM u.status"
                " OR k.until IS DISTINCT FROM u.until OR k.last_error IS DISTINCT FROM u.err)",
                seq,
                ids,
                [latest[i][0] for i in ids],
                [latest[i][1] for i in ids],
                [latest[i][2] for i in ids],
            )
            if not _count(status):
                raise _Rollback(None)  # nothing changed: the feed does not move

        await self._write(tx)

    # counters

    async def add_counters(
        self,
        key_deltas: list[tuple[int, int, int, int, int, int, int, float]],
        provider_deltas: dict[str, tuple[int, int, int, int, int, int]],
    ) -> None:
        # One row per key (a statement may not update a row twice), summed; sorted, so
        # concurrent flushes lock rows in the same order.
        per_key: dict[int, list[Any]] = {}
        for d in key_deltas:
            row = per_key.setdefault(int(d[0]), [0, 0, 0, 0, 0, 0, 0.0])
            for i in range(6):
                row[i] += int(d[i + 1])
            row[6] = max(row[6], float(d[7]))
        key_ids = sorted(per_key)
        names = sorted(provider_deltas)
        if not key_ids and not names:
            return
        key_cols = [[per_key[k][i] for k in key_ids] for i in range(7)]
        prov_cols = [[int(provider_deltas[n][i]) for n in names] for i in range(6)]

        async def tx(conn: asyncpg.Connection) -> None:
            if key_ids:
                # Deltas for keys deleted meanwhile are dropped, not resurrected: the join finds
                # no key, and FOR KEY SHARE holds off a concurrent delete until this commits.
                sets = ", ".join(f"{c} = key_stats.{c} + EXCLUDED.{c}" for c in _COUNTERS)
                await conn.execute(
                    f"INSERT INTO key_stats (key_id, {', '.join(_COUNTERS)}, last_used)"
                    " SELECT u.* FROM unnest($1::bigint[], $2::bigint[], $3::bigint[],"
                    " $4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[], $8::float8[])"
                    f" AS u(key_id, {', '.join(_COUNTERS)}, last_used)"
                    " JOIN keys k ON k.id = u.key_id ORDER BY u.key_id FOR KEY SHARE OF k"
                    f" ON CONFLICT (key_id) DO UPDATE SET {sets},"
                    " last_used = GREATEST(key_stats.last_used, EXCLUDED.last_used)",
                    key_ids,
                    *key_cols,
                )
            if names:
                sets = ", ".join(
                    f"{c} = provider_stats.{c} + EXCLUDED.{c}" for c in _PROVIDER_COUNTERS
                )
                await conn.execute(
                    f"INSERT INTO provider_stats (provider, {', '.join(_PROVIDER_COUNTERS)})"
                    " SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[],"
                    " $5::bigint[], $6::bigint[], $7::bigint[])"
                    f" ON CONFLICT (provider) DO UPDATE SET {sets}",
                    names,
                    *prov_cols,
                )

        await self._write(tx)

    async def provider_totals(self) -> dict[str, dict[str, int]]:
        async with self._conn() as conn:
            rows = await conn.fetch(
                f"SELECT provider, {', '.join(_PROVIDER_COUNTERS)} FROM provider_stats"
            )
        return {r[0]: dict(zip(_PROVIDER_COUNTERS, r[1:], strict=True)) for r in rows}

    async def key_counts(self) -> dict[str, dict[str, int]]:
        async with self._conn() as conn:
            rows = await conn.fetch(
                "SELECT provider, status, COUNT(*) FROM keys GROUP BY provider, status"
            )
        out: dict[str, dict[str, int]] = {}
        for provider, status, n in rows:
            out.setdefault(provider, {})[status] = int(n)
        return out

    # provider overrides and meta

    async def get_provider_overrides(self) -> dict[str, dict[str, Any]]:
        async with self._conn() as conn:
            rows = await conn.fetch("SELECT name, data FROM provider_overrides")
        out = {}
        for name, data in rows:
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

        async def tx(conn: asyncpg.Connection) -> None:
            seq = await self._bump(conn)
            data = await conn.fetchval(
                "SELECT data FROM provider_overrides WHERE name = $1 FOR UPDATE", name
            )
            merged = json.loads(data) if data else {}
            for field, value in fields.items():
                if value is None:
                    merged.pop(field, None)
                else:
                    merged[field] = value
            await conn.execute(
                "INSERT INTO provider_overrides (name, data, updated_seq) VALUES ($1, $2, $3)"
                " ON CONFLICT (name) DO UPDATE SET data = EXCLUDED.data,"
                " updated_seq = EXCLUDED.updated_seq",
                name,
                json.dumps(merged, sort_keys=True),
                seq,
            )

        await self._write(tx)

    async def get_meta(self, name: str) -> str | None:
        async with self._conn() as conn:
            value = await conn.fetchval("SELECT value FROM meta WHERE name = $1", name)
        return None if value is None else str(value)

    async def set_meta(self, name: str, value: str) -> None:
        if name in CRYPTO_META:
            raise ValueError(f"meta {name} is managed by the store")
        if not isinstance(value, str):
            raise ValueError(f"meta {name} must be text")

        async def tx(conn: asyncpg.Connection) -> None:
            seq = await self._bump(conn)
            await conn.execute(
                "INSERT INTO meta (name, value, updated_seq) VALUES ($1, $2, $3)"
                " ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value,"
                " updated_seq = EXCLUDED.updated_seq",
                name,
                value,
                seq,
            )

        await self._write(tx)

    # admin sessions

    async def revoke_session(self, session_id: str, expires_at: float) -> None:
        check_session_id(session_id)
        until = float(check_number("expires_at", expires_at, integer=False))

        async def tx(conn: asyncpg.Connection) -> None:
            await conn.execute("DELETE FROM revoked_sessions WHERE expires_at <= $1", time.time())
            await conn.execute(
                "INSERT INTO revoked_sessions (session_id, expires_at) VALUES ($1, $2)"
                " ON CONFLICT (session_id) DO UPDATE SET"
                " expires_at = GREATEST(revoked_sessions.expires_at, EXCLUDED.expires_at)",
                session_id,
                until,
            )

        await self._write(tx)

    async def session_revoked(self, session_id: str) -> bool:
        check_session_id(session_id)
        async with self._conn() as conn:
            found = await conn.fetchval(
                "SELECT 1 FROM revoked_sessions WHERE session_id = $1 AND expires_at > $2",
                session_id,
                time.time(),
            )
        return found is not None

    # change feed

    async def changes_since(self, seq: int) -> Changes:
        seq = int(seq)

        async def read(conn: asyncpg.Connection) -> Changes:
            current, pruned = await conn.fetchrow(
                "SELECT seq, pruned_seq FROM change_feed WHERE id = 1"
            )
            if seq < pruned or seq > current:
                # Deletions before `pruned` are forgotten, or this is another database: hand back
                # every key and ask for a full reload.
                ids = [r[0] for r in await conn.fetch("SELECT id FROM keys ORDER BY id")]
                return Changes(current, ids, [], True, full=True)
            key_ids = [
                r[0]
                for r in await conn.fetch(
                    "SELECT id FROM keys WHERE updated_seq > $1 ORDER BY id", seq
                )
            ]
            deleted = [
                r[0]
                for r in await conn.fetch(
                    "SELECT key_id FROM deleted_keys WHERE seq > $1 ORDER BY key_id", seq
                )
            ]
            providers_changed = bool(
                await conn.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM provider_overrides WHERE updated_seq > $1)"
                    " OR EXISTS (SELECT 1 FROM meta WHERE updated_seq > $1)",
                    seq,
                )
            )
            return Changes(current, key_ids, deleted, providers_changed)

        return await self._read(read)

    async def current_seq(self) -> int:
        async with self._conn() as conn:
            return int(await conn.fetchval("SELECT seq FROM change_feed WHERE id = 1"))
