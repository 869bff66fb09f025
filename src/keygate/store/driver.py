"""What a SQL backend supplies to the store core, and what opening a database means.

`SqlDriver` is the contract between the store core (`store.core`, every operation written once)
and a backend (`store.sqlite`, `store.postgres`). It also holds what runs at open on any
backend: migrations (read first without a lock, applied under it) and the switch to
encryption. A backend supplies only:

- sessions: `_plain`, `_read` (one snapshot) and `_write` (one transaction; a body raising
  `Rollback(result)` is rolled back and answers `result`), each running `body(db)` on one
  connection. `db` speaks `$1, $2, ...` placeholders; the SQLite driver rewrites them.
- the dialect: a few SQL fragments (class attributes) and the bulk statements, where the two
  databases really differ (`executemany` and `IN` chunks against `unnest` of arrays).

Bodies are coroutines that await only `db`. The SQLite driver runs them to completion on its
own thread without an event loop (its `db` never suspends), so a whole operation is still one
hop to that thread, as before.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol, TypeVar

from keygate.store.base import (
    TOMBSTONE_TTL_S,
    KeyRecord,
    Store,
    StoreError,
    load_migrations,
    record_from_row,
)
from keygate.store.crypto import (
    CRYPTO_META,
    ERR_KEY_REQUIRED,
    META_VERIFIER,
    Cipher,
    resolve_cipher,
)

T = TypeVar("T")

BIG_RESULT = 2000  # rows above which hashing/decryption moves off the event loop
PROVIDER_COUNTERS = ("requests", "ok", "err_4xx", "err_5xx", "tokens_in", "tokens_out")
_CRYPTO_META_SQL = "SELECT name, value FROM meta WHERE name IN ({})".format(
    ", ".join(f"${i}" for i in range(1, len(CRYPTO_META) + 1))
)


class Db(Protocol):
    """One connection inside a session, as the core sees it."""

    async def fetch(self, sql: str, *args: Any) -> list[Any]: ...
    async def fetchrow(self, sql: str, *args: Any) -> Any | None: ...
    async def fetchval(self, sql: str, *args: Any) -> Any: ...
    async def execute(self, sql: str, *args: Any) -> int:
        """Run one statement; the rows it touched."""

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...
    async def offload(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` without blocking the event loop (CPU work: key derivation, decryption)."""

    def exclusive(self) -> AbstractAsyncContextManager[None]:
        """One transaction that holds the schema lock (migrations, the switch to encryption)."""


Body = Callable[[Db], Awaitable[T]]
KeyDelta = tuple[int, int, int, int, int, int, int, float]  # id, six counters, last_used
ProviderDelta = tuple[str, int, int, int, int, int, int]  # name, PROVIDER_COUNTERS


class Rollback(Exception):
    """Raised inside a write body to roll it back (nothing changed) and still answer `result`."""

    def __init__(self, result: Any) -> None:
        super().__init__("rollback")
        self.result = result


class SqlDriver(Store):
    """The per-backend half of a SQL store (see the module doc); `SqlStore` is the other."""

    dialect: str  # migrations/<dialect>/NNNN_*.sql
    GREATEST = "GREATEST"  # the two-argument maximum
    # (key_id, day, requests, tokens): add to the same day, replace an older one, drop a
    # deleted key's row (the SET expressions all read the row as it was)
    DAY_UPSERT = (
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
    )
    ILIKE = "ILIKE"  # case-insensitive LIKE
    SEARCH_FROM = "keys k"  # the table (and index) the admin search scans
    FOR_UPDATE = " FOR UPDATE"  # row lock on a read-modify-write, where rows can be locked
    HOLD_FEED = ""  # run in `exclusive()` before the switch to encryption, if needed
    HAS_MIGRATIONS: str  # one row/true when schema_migrations exists

    def __init__(self, secret_key: str) -> None:
        self._secret_key = secret_key
        self._cipher: Cipher = Cipher()
        self.tombstone_ttl_s = TOMBSTONE_TTL_S

    # the driver

    @property
    @abc.abstractmethod
    def _where(self) -> str:
        """The database for messages ("SQLite database /path"), password masked."""

    @abc.abstractmethod
    async def _plain(self, body: Body[T]) -> T:
        """`body(db)` on one connection, each statement on its own."""

    @abc.abstractmethod
    async def _read(self, body: Body[T]) -> T:
        """`body(db)` in one read snapshot, so several SELECTs agree."""

    @abc.abstractmethod
    async def _write(self, body: Body[T]) -> T:
        """`body(db)` in one write transaction; `Rollback(result)` rolls back, answers result."""

    @abc.abstractmethod
    async def _offload(self, fn: Callable[[], T]) -> T:
        """`fn()` off the event loop, outside any session (batch hashing/encryption)."""

    @abc.abstractmethod
    async def _run_script(self, db: Db, sql: str) -> None:
        """Apply one migration script inside the current transaction."""

    @abc.abstractmethod
    async def _find_fingerprints(self, db: Db, provider: str, fps: list[str]) -> dict[str, int]:
        """{fingerprint: id} of the provider's keys among `fps`."""

    @abc.abstractmethod
    async def _insert_keys(
        self, db: Db, provider: str, source: str, seq: int, rows: list[tuple[str, str, str]]
    ) -> list[tuple[str, int]]:
        """Insert (sealed, fingerprint, masked) rows in order; (fingerprint, id) of those added."""

    @abc.abstractmethod
    async def _key_rows(self, db: Db, ids: list[int]) -> list[Any]:
        """`KEY_SELECT` rows of the keys among the sorted `ids`, in id order."""

    @abc.abstractmethod
    async def _update_health(
        self, db: Db, seq: int, rows: list[tuple[int, str, float, str]]
    ) -> int:
        """Set (id, status, until, last_error) where it differs, stamped `seq`; rows changed."""

    @abc.abstractmethod
    async def _add_counter_rows(
        self, db: Db, keys: list[KeyDelta], providers: list[ProviderDelta]
    ) -> None:
        """Add one delta row per key (sorted, existing keys only) and per provider."""

    @abc.abstractmethod
    async def _reseal(self, db: Db, rows: list[tuple[int, str, str]]) -> None:
        """Set (id, secret, fingerprint) on every key (the switch to encryption)."""

    async def _after_reseal(self, db: Db) -> None:
        """Leave no plain secret in free pages after the switch to encryption."""

    async def _after_import(self, added: int) -> None:
        """Housekeeping after a batch import (fresh planner statistics)."""

    # shared plumbing

    def _record(self, row: Sequence[Any]) -> KeyRecord:
        return record_from_row(row, self._cipher.unseal)

    async def _records(self, db: Db, rows: list[Any]) -> list[KeyRecord]:
        if len(rows) > BIG_RESULT:  # decryption of many keys: keep the event loop free
            return await db.offload(lambda: [self._record(r) for r in rows])
        return [self._record(r) for r in rows]

    @staticmethod
    async def _bump(db: Db) -> int:
        """Next change-feed seq; first statement of every feed-moving write, so writers queue on
        the feed row and seq order is commit order."""
        return int(
            await db.fetchval("UPDATE change_feed SET seq = seq + 1 WHERE id = 1 RETURNING seq")
        )

    async def _guard_plain_writes(self, db: Db) -> None:
        """Refuse to add plain secrets after another process switched the db to encryption.

        Call after _bump: the feed lock orders this read after the switch's commit.
        """
        if not self._cipher.encrypted and await db.fetchval(
            "SELECT 1 FROM meta WHERE name = $1", META_VERIFIER
        ):
            raise StoreError(ERR_KEY_REQUIRED)

    # opening: migrations and encryption

    def _migrations(self) -> list[tuple[int, str, str]]:
        return load_migrations(self.dialect)

    async def _setup(self, db: Db, migrations: list[tuple[int, str, str]]) -> None:
        """Bring a freshly opened database up to date; the driver calls it from open()."""
        await self._migrate(db, migrations)
        await self._setup_cipher(db)

    async def _migrate(self, db: Db, migrations: list[tuple[int, str, str]]) -> None:
        newest = migrations[-1][0] if migrations else 0
        applied = "SELECT COALESCE(MAX(version), 0) FROM schema_migrations"
        # Read first without the lock: an up-to-date database (the usual case) needs none.
        if await db.fetchval(self.HAS_MIGRATIONS):
            current = int(await db.fetchval(applied))
            self._check_version(current, newest)
            if current == newest:
                return
        async with db.exclusive():
            await db.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
                " applied_at DOUBLE PRECISION NOT NULL)"
            )
            current = int(await db.fetchval(applied))  # again, under the lock
            self._check_version(current, newest)
            for version, name, sql in migrations:
                if version <= current:
                    continue
                await self._run_script(db, sql)
                await db.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
                    version,
                    name,
                    time.time(),
                )

    def _check_version(self, current: int, newest: int) -> None:
        if current > newest:
            raise StoreError(
                f"{self._where} has schema version {current}, newer than this "
                f"keygate knows ({newest}): upgrade keygate"
            )

    async def _setup_cipher(self, db: Db) -> None:
        async def crypto_meta() -> dict[str, str]:
            return {r[0]: r[1] for r in await db.fetch(_CRYPTO_META_SQL, *CRYPTO_META)}

        # The key derivation costs ~50 ms of CPU: off the event loop.
        cipher, to_write = await db.offload(resolve_cipher, self._secret_key, await crypto_meta())
        if not to_write:
            self._cipher = cipher
            return
        rewritten = 0
        async with db.exclusive():
            if self.HOLD_FEED:  # writers (a plain add_key elsewhere) wait for the switch
                await db.execute(self.HOLD_FEED)
            meta = await crypto_meta()
            if meta.get(META_VERIFIER):  # another process switched it on meanwhile
                cipher = (await db.offload(resolve_cipher, self._secret_key, meta))[0]
            else:
                rows = await db.fetch("SELECT id, secret FROM keys ORDER BY id")
                old = Cipher()

                def reseal() -> list[tuple[int, str, str]]:
                    out = []
                    for key_id, stored in rows:
                        secret = old.unseal(stored)
                        out.append((key_id, cipher.seal(secret), cipher.fingerprint(secret)))
                    return out

                updates = await db.offload(reseal)
                if updates:
                    await self._reseal(db, updates)
                await db.executemany(
                    "INSERT INTO meta (name, value, updated_seq) VALUES ($1, $2, 0)"
                    " ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
                    list(to_write.items()),
                )
                rewritten = len(updates)
        self._cipher = cipher
        if rewritten:
            await self._after_reseal(db)
