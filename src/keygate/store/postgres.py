"""The shared database: PostgreSQL through an asyncpg connection pool.

Same tables, meanings and behaviour as on SQLite; the operations are the store core's
(`store.core`), this module is the PostgreSQL driver it holds (`PostgresDriver`) and the core on
it (`PostgresStore`). Differences are only in how concurrency is handled:

- Migrations and the switch to encryption run in one transaction under a transaction-level
  advisory lock, so instances starting together apply each exactly once.
- Change feed: every feed-moving write first bumps the one `change_feed` row. Its row lock is
  held until commit, so writers queue on it and seq order is commit order: a reader that sees
  seq S (in one repeatable-read snapshot) sees every write stamped <= S.
- Deadlocks and serialization failures are retried.
- Bulk work (imports, counter and health batches) is one statement over `unnest` of arrays.
- Several hosts (`postgresql://h1,h2/db?target_session_attrs=read-write`): asyncpg connects to
  the writable one. A server that goes away, restarts or is no longer writable fails the
  operation as `StoreUnavailable`, and the pool drops every connection it holds, so the next
  operation connects afresh, to whichever host is writable by then.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, TypeAlias, TypeVar, cast
from urllib.parse import unquote, urlsplit, urlunsplit

import asyncpg  # type: ignore[import-untyped, unused-ignore]

from keygate.config.urls import mask_url
from keygate.store.core import Store
from keygate.store.driver import (
    PROVIDER_COUNTERS,
    Body,
    Db,
    Dialect,
    HealthRow,
    KeyDelta,
    NewKeyRow,
    ProviderDelta,
    ResealRow,
    Rollback,
    Row,
)
from keygate.store.records import StoreError, StoreUnavailable

T = TypeVar("T")

CONNECT_TIMEOUT_S = 10.0
POOL_MAX_SIZE = 10
WRITE_ATTEMPTS = 5  # deadlocks / serialization failures are retried this many times in all
ANALYZE_AFTER = 5000  # keys added by one import that warrant fresh planner statistics
# One advisory lock id for schema changes and the switch to encryption (per database).
_LOCK_ID = int.from_bytes(hashlib.sha256(b"keygate.store.migrate").digest()[:8], "big", signed=True)
# The server is gone, shutting down, starting, or (after a switch) not the writable one any
# more: nothing on this connection can be trusted again.
_UNAVAILABLE = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.CannotConnectNowError,
    asyncpg.ReadOnlySQLTransactionError,
    asyncpg.exceptions.TargetServerAttributeNotMatched,
)
_DB_ERRORS = (asyncpg.PostgresError, *_UNAVAILABLE)

_COUNTERS = ("use_count", "ok", "err_4xx", "err_5xx", "tokens_in", "tokens_out")
# A pooled connection (a proxy of one) or a connection of its own, as `PgDb` drives it.
PgConnection: TypeAlias = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy

POSTGRES = Dialect(
    name="postgres",
    greatest="GREATEST",
    ilike="ILIKE",
    search_from="keys k",
    for_update=" FOR UPDATE",
    hold_feed="SELECT seq FROM change_feed WHERE id = 1 FOR UPDATE",
    has_migrations="SELECT to_regclass('schema_migrations') IS NOT NULL",
    day_upsert=(
        "INSERT INTO key_days (key_id, day, requests, tokens)"
        " SELECT $1::bigint, $2::float8, $3::bigint, $4::bigint"
        " WHERE EXISTS (SELECT 1 FROM keys WHERE id = $1::bigint)"
        " ON CONFLICT (key_id) DO UPDATE SET"
        " requests = CASE WHEN key_days.day = EXCLUDED.day"
        " THEN key_days.requests + EXCLUDED.requests"
        " WHEN key_days.day < EXCLUDED.day THEN EXCLUDED.requests ELSE key_days.requests END,"
        " tokens = CASE WHEN key_days.day = EXCLUDED.day THEN key_days.tokens + EXCLUDED.tokens"
        " WHEN key_days.day < EXCLUDED.day THEN EXCLUDED.tokens ELSE key_days.tokens END,"
        " day = GREATEST(key_days.day, EXCLUDED.day)"
    ),
)


def describe_dsn(dsn: str) -> str:
    """The DSN with any password masked, for messages."""
    return mask_url(dsn)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _count(status: str) -> int:
    """Rows touched, from a command tag such as 'UPDATE 3'."""
    try:
        return int(status.rsplit(" ", 1)[-1])
    except ValueError:
        return 0


def _columns(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    """Rows as `width` column lists, for `unnest($1::type[], ...)`."""
    return [[row[i] for row in rows] for i in range(width)]


class PgDb:
    """The core's `Db` over one pooled asyncpg connection."""

    __slots__ = ("conn",)

    def __init__(self, conn: PgConnection) -> None:
        self.conn = conn

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return cast(list[Row], await self.conn.fetch(sql, *args))

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        return cast(Row | None, await self.conn.fetchrow(sql, *args))

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return await self.conn.fetchval(sql, *args)

    async def execute(self, sql: str, *args: Any) -> int:
        # Without arguments this is the simple query protocol: a whole migration script at once.
        return _count(str(await self.conn.execute(sql, *args)))

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await self.conn.executemany(sql, rows)

    async def offload(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(fn, *args)

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        async with self.conn.transaction():
            await self.conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_ID)
            yield


class PostgresDriver:
    """The `Driver` for a PostgreSQL database; any number of instances and CLIs may share it."""

    dialect = POSTGRES

    def __init__(self, dsn: str, max_size: int = POOL_MAX_SIZE) -> None:
        self.dsn = dsn
        self.max_size = max(2, int(max_size))
        self._dsn_masked = describe_dsn(dsn)
        self._pool: asyncpg.Pool | None = None

    def __repr__(self) -> str:
        return f"PostgresDriver({self._dsn_masked!r})"

    @property
    def where(self) -> str:
        return f"PostgreSQL database {self._dsn_masked}"

    @property
    def dsn_masked(self) -> str:
        return self._dsn_masked

    # plumbing

    def _error(self, exc: BaseException) -> StoreError:
        if isinstance(exc, (OSError, TimeoutError)) and not isinstance(exc, asyncpg.PostgresError):
            return StoreUnavailable(f"{self.where} is unreachable: {_one_line(exc)}")
        if isinstance(exc, _UNAVAILABLE):
            return StoreUnavailable(f"{self.where} is unavailable: {_one_line(exc)}")
        return StoreError(f"{self.where}: {_one_line(exc)}")

    @contextlib.asynccontextmanager
    async def _conn(self) -> AsyncIterator[PgConnection]:
        """A pooled connection; driver and server errors become one-line StoreErrors
        (`StoreUnavailable` when the server is gone or not writable)."""
        pool = self._pool
        if pool is None:
            raise StoreError("the store is not open")
        try:
            async with pool.acquire(timeout=CONNECT_TIMEOUT_S) as conn:
                try:
                    yield conn
                except _UNAVAILABLE:
                    # Not back into the pool: a read-only server would refuse every write on
                    # it. The others were opened to the same server: replaced at next use.
                    conn.terminate()
                    raise
        except _DB_ERRORS as exc:
            if self._pool is None:
                raise StoreError("the store is closed") from exc
            if isinstance(exc, _UNAVAILABLE) and not isinstance(exc, TimeoutError):
                # (a timeout may be a busy pool or a slow server: not a reason to reconnect all)
                await pool.expire_connections()
            raise self._error(exc) from exc

    # sessions

    async def plain(self, body: Body[T]) -> T:
        async with self._conn() as conn:
            return await body(PgDb(conn))

    async def read(self, body: Body[T]) -> T:
        async with (
            self._conn() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            return await body(PgDb(conn))

    async def write(self, body: Body[T]) -> T:
        for attempt in range(WRITE_ATTEMPTS):
            async with self._conn() as conn:
                try:
                    async with conn.transaction():
                        return await body(PgDb(conn))
                except Rollback as rollback:
                    return cast(T, rollback.result)
                except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError):
                    if attempt == WRITE_ATTEMPTS - 1:
                        raise
            await asyncio.sleep(0.01 * (attempt + 1))
        raise AssertionError("unreachable")

    async def offload(self, fn: Callable[[], T]) -> T:
        return await asyncio.to_thread(fn)

    # the connection's life

    async def open(self, setup: Body[None]) -> None:
        if self._pool is not None:
            return
        pool = await self._create_pool()
        try:
            async with pool.acquire(timeout=CONNECT_TIMEOUT_S) as conn:
                await setup(PgDb(conn))
        except _DB_ERRORS as exc:
            pool.terminate()
            raise StoreError(f"cannot open {self.where}: {_one_line(exc)}") from exc
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
            raise StoreError(f"cannot connect to {self.where}: {_one_line(exc)}") from exc

    async def _create_database(self) -> None:
        """Create the DSN's database (like SQLite creates its file) if the role may."""
        parts = urlsplit(self.dsn)
        name = unquote(parts.path.lstrip("/"))
        if not name or "/" in name:
            raise StoreError(f"{self.where} does not exist")
        admin_dsn = urlunsplit(parts._replace(path="/postgres"))
        try:
            conn = await asyncpg.connect(admin_dsn, timeout=CONNECT_TIMEOUT_S)
        except _DB_ERRORS as exc:
            raise StoreError(
                f"{self.where} does not exist and cannot be created "
                f"({_one_line(exc)}): create it with createdb"
            ) from exc
        try:
            quoted = '"' + name.replace('"', '""') + '"'
            # Another instance may create it at the same moment (either error, by timing).
            with contextlib.suppress(asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
                await conn.execute(f"CREATE DATABASE {quoted}")
        except asyncpg.PostgresError as exc:
            raise StoreError(
                f"{self.where} does not exist and cannot be created "
                f"({_one_line(exc)}): create it with createdb"
            ) from exc
        finally:
            await conn.close()

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), timeout=10)
        except (TimeoutError, *_DB_ERRORS):
            pool.terminate()

    # the dialect: scripts, bulk statements

    async def run_script(self, db: Db, sql: str) -> None:
        await db.execute(sql)  # simple query protocol: the whole script at once

    async def after_reseal(self, db: Db) -> None:
        # Rewrite the table so the old row versions with plain secrets are not left in its
        # pages (VACUUM FULL needs the table's owner; without it the server only warns).
        with contextlib.suppress(asyncpg.PostgresError):
            await db.execute("VACUUM FULL keys")

    async def after_import(self, added: int) -> None:
        if added < ANALYZE_AFTER:
            return
        # Fresh planner statistics now, not at autovacuum's next round: with a table that was
        # empty a moment ago, the next imports' duplicate checks would plan badly.
        with contextlib.suppress(StoreError, asyncpg.PostgresError):
            async with self._conn() as conn:
                await conn.execute("ANALYZE keys")

    async def find_fingerprints(self, db: Db, provider: str, fps: list[str]) -> dict[str, int]:
        rows = await db.fetch(
            "SELECT k.fingerprint, k.id FROM unnest($2::text[]) AS u(fp)"
            " JOIN keys k ON k.fingerprint = u.fp AND k.provider = $1",
            provider,
            fps,
        )
        return {r[0]: r[1] for r in rows}

    async def insert_keys(
        self, db: Db, provider: str, source: str, seq: int, rows: list[NewKeyRow]
    ) -> list[tuple[str, int]]:
        inserted = await db.fetch(
            "INSERT INTO keys (provider, secret, fingerprint, masked, source, created_at,"
            " updated_seq) SELECT $1, u.secret, u.fp, u.masked, $2, $3, $4"
            " FROM unnest($5::text[], $6::text[], $7::text[]) WITH ORDINALITY"
            " AS u(secret, fp, masked, ord) ORDER BY u.ord"
            " ON CONFLICT (fingerprint, provider) DO NOTHING RETURNING fingerprint, id",
            provider,
            source,
            time.time(),
            seq,
            *_columns(rows, 3),
        )
        return [(r[0], r[1]) for r in inserted]

    async def key_rows(self, db: Db, select: str, ids: list[int]) -> list[Row]:
        return await db.fetch(f"{select} WHERE k.id = ANY($1::bigint[]) ORDER BY k.id", ids)

    async def update_health(self, db: Db, seq: int, rows: list[HealthRow]) -> int:
        return await db.execute(
            "UPDATE keys k SET status = u.status, until = u.until, last_error = u.err,"
            " updated_seq = $1"
            " FROM unnest($2::bigint[], $3::text[], $4::float8[], $5::text[])"
            " AS u(id, status, until, err)"
            " WHERE k.id = u.id AND (k.status IS DISTINCT FROM u.status"
            " OR k.until IS DISTINCT FROM u.until OR k.last_error IS DISTINCT FROM u.err)",
            seq,
            *_columns(rows, 4),
        )

    async def add_counter_rows(
        self, db: Db, keys: list[KeyDelta], providers: list[ProviderDelta]
    ) -> None:
        if keys:
            # Deltas for keys deleted meanwhile are dropped, not resurrected: the join finds no
            # key, and FOR KEY SHARE holds off a concurrent delete until this commits.
            sets = ", ".join(f"{c} = key_stats.{c} + EXCLUDED.{c}" for c in _COUNTERS)
            await db.execute(
                f"INSERT INTO key_stats (key_id, {', '.join(_COUNTERS)}, last_used)"
                " SELECT u.* FROM unnest($1::bigint[], $2::bigint[], $3::bigint[],"
                " $4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[], $8::float8[])"
                f" AS u(key_id, {', '.join(_COUNTERS)}, last_used)"
                " JOIN keys k ON k.id = u.key_id ORDER BY u.key_id FOR KEY SHARE OF k"
                f" ON CONFLICT (key_id) DO UPDATE SET {sets},"
                " last_used = GREATEST(key_stats.last_used, EXCLUDED.last_used)",
                *_columns(keys, 8),
            )
        if providers:
            sets = ", ".join(f"{c} = provider_stats.{c} + EXCLUDED.{c}" for c in PROVIDER_COUNTERS)
            await db.execute(
                f"INSERT INTO provider_stats (provider, {', '.join(PROVIDER_COUNTERS)})"
                " SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[],"
                " $5::bigint[], $6::bigint[], $7::bigint[])"
                f" ON CONFLICT (provider) DO UPDATE SET {sets}",
                *_columns(providers, 7),
            )

    async def reseal(self, db: Db, rows: list[ResealRow]) -> None:
        await db.execute(
            "UPDATE keys SET secret = u.secret, fingerprint = u.fp"
            " FROM unnest($1::bigint[], $2::text[], $3::text[]) AS u(id, secret, fp)"
            " WHERE keys.id = u.id",
            *_columns(rows, 3),
        )


class PostgresStore(Store):
    """The store core on a `PostgresDriver`, as `create_store` makes it for a postgresql://
    location. It adds no operation: only its constructor and the DSN."""

    def __init__(self, dsn: str, secret_key: str = "", max_size: int = POOL_MAX_SIZE) -> None:
        self._postgres = PostgresDriver(dsn, max_size)
        super().__init__(self._postgres, secret_key)

    def __repr__(self) -> str:
        return f"PostgresStore({self._postgres.dsn_masked!r})"

    @property
    def dsn(self) -> str:
        return self._postgres.dsn
