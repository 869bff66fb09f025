"""The embedded database: one SQLite file in WAL mode, driven from one dedicated worker thread.

All sqlite3 calls run on a single-thread executor, so the event loop never blocks on disk and the
connection is only ever touched by the thread that made it. Several processes (the server, the
CLI, other instances) can use the same file at once: WAL lets readers run beside a writer, every
write takes the lock up front (BEGIN IMMEDIATE) and waits up to `busy_timeout` for it.

`SqliteDriver` is the driver the store core holds (`store.driver`): the connection and its
thread, transactions, `?N` placeholders and the bulk statements (`executemany`, `IN` lists of at
most `_CHUNK` values). `SqliteStore` is the core on this driver, as `create_store` makes it.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar, cast

from keygate.store.core import Store
from keygate.store.driver import (
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
from keygate.store.files import DATA_FILE_NAME, create_private, private_dir, private_file
from keygate.store.records import StoreError

T = TypeVar("T")

BUSY_TIMEOUT_MS = 10_000
_CHUNK = 900  # host parameters per IN (...) list, below SQLite's oldest limit of 999
_PLACEHOLDER = re.compile(r"\$(\d+)")

SQLITE = Dialect(
    name="sqlite",
    greatest="MAX",
    ilike="LIKE",  # case-insensitive for ASCII
    # The covering index keeps the search scan off the table rows and their long secrets.
    search_from="keys k INDEXED BY keys_search",
    for_update="",  # BEGIN IMMEDIATE already holds the write lock
    hold_feed="",  # ... and so does `exclusive()`
    has_migrations=(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
    ),
    day_upsert=(
        "INSERT INTO key_days (key_id, day, requests, tokens) SELECT $1, $2, $3, $4"
        " WHERE EXISTS (SELECT 1 FROM keys WHERE id = $1)"
        " ON CONFLICT (key_id) DO UPDATE SET"
        " requests = CASE WHEN key_days.day = excluded.day"
        " THEN key_days.requests + excluded.requests"
        " WHEN key_days.day < excluded.day THEN excluded.requests ELSE key_days.requests END,"
        " tokens = CASE WHEN key_days.day = excluded.day THEN key_days.tokens + excluded.tokens"
        " WHEN key_days.day < excluded.day THEN excluded.tokens ELSE key_days.tokens END,"
        " day = MAX(key_days.day, excluded.day)"
    ),
)


@functools.lru_cache(maxsize=256)
def _sql(text: str) -> str:
    """The core's `$1` placeholders as SQLite's numbered `?1`."""
    return _PLACEHOLDER.sub(r"?\1", text)


def _statements(script: str) -> Iterable[str]:
    """Split a migration script into statements (executescript would commit our transaction)."""
    buf: list[str] = []
    for line in script.splitlines(keepends=True):
        buf.append(line)
        text = "".join(buf)
        if sqlite3.complete_statement(text):
            if text.strip():
                yield text
            buf = []
    rest = "".join(buf)
    if rest.strip() and not all(
        ln.strip().startswith("--") or not ln.strip() for ln in rest.splitlines()
    ):
        raise StoreError("a SQLite migration ends with an incomplete statement")


def _chunks(items: Sequence[T], size: int = _CHUNK) -> Iterable[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def run_sync(step: Coroutine[Any, Any, T]) -> T:
    """Run a core body to its end on this thread: `SqliteDb` never suspends, so one send()
    finishes it. A body that waits on the event loop is a programming error."""
    try:
        step.send(None)
    except StopIteration as done:
        return cast(T, done.value)
    step.close()
    raise RuntimeError("a store step waited on the event loop inside the SQLite thread")


class SqliteDb:
    """The core's `Db` over a sqlite3 connection, on the store's thread; never suspends.

    Results are fetched whole, so no statement stays open across a COMMIT.
    """

    __slots__ = ("conn",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return self.conn.execute(_sql(sql), args).fetchall()

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        rows = self.conn.execute(_sql(sql), args).fetchall()
        return cast(Row, rows[0]) if rows else None

    async def fetchval(self, sql: str, *args: Any) -> Any:
        rows = self.conn.execute(_sql(sql), args).fetchall()
        return rows[0][0] if rows else None

    async def execute(self, sql: str, *args: Any) -> int:
        return self.conn.execute(_sql(sql), args).rowcount

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self.conn.executemany(_sql(sql), rows)

    async def offload(self, fn: Callable[..., T], *args: Any) -> T:
        return fn(*args)  # already off the event loop

    @asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        self.conn.execute("BEGIN IMMEDIATE")  # the write lock is the schema lock
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")


def _conn_of(db: Db) -> sqlite3.Connection:
    assert isinstance(db, SqliteDb)
    return db.conn


class SqliteDriver:
    """The `Driver` for one SQLite file; safe to share between processes and with the CLI."""

    dialect = SQLITE

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None

    def __repr__(self) -> str:
        return f"SqliteDriver({str(self.path)!r})"

    @property
    def where(self) -> str:
        return f"SQLite database {self.path}"

    @property
    def conn(self) -> sqlite3.Connection | None:
        """The connection (touch it only on the store's thread, through `run`); None if closed."""
        return self._conn

    # plumbing

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(conn, *args)` on the store's thread; sqlite errors become one-line StoreErrors."""
        if self._executor is None or self._conn is None:
            raise StoreError("the store is not open")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call, fn, args)

    def _call(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        conn = self._conn
        if conn is None:
            raise StoreError("the store is closed")
        try:
            return fn(conn, *args)
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise StoreError(
                    f"SQLite database {self.path} stayed locked by another process for "
                    f"{BUSY_TIMEOUT_MS // 1000} s"
                ) from exc
            raise StoreError(f"SQLite database {self.path}: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"SQLite database {self.path}: {exc}") from exc

    # sessions

    async def plain(self, body: Body[T]) -> T:
        return await self.run(lambda conn: run_sync(body(SqliteDb(conn))))

    async def read(self, body: Body[T]) -> T:
        def fn(conn: sqlite3.Connection) -> T:
            conn.execute("BEGIN")
            try:
                return run_sync(body(SqliteDb(conn)))
            finally:
                conn.execute("COMMIT")

        return await self.run(fn)

    async def write(self, body: Body[T]) -> T:
        def fn(conn: sqlite3.Connection) -> T:
            conn.execute("BEGIN IMMEDIATE")  # the lock first, so it cannot deadlock
            try:
                result = run_sync(body(SqliteDb(conn)))
            except Rollback as rollback:
                conn.execute("ROLLBACK")
                return cast(T, rollback.result)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

        return await self.run(fn)

    async def offload(self, fn: Callable[[], T]) -> T:
        return await self.run(lambda conn: fn())

    # the connection's life

    async def open(self, setup: Body[None]) -> None:
        if self._conn is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="keygate-sqlite")
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._open_sync, setup)
        except BaseException:
            self._executor.shutdown(wait=True)
            self._executor = None
            raise

    def _open_sync(self, setup: Body[None]) -> None:
        try:
            self._private_files()
        except OSError as exc:
            raise StoreError(f"cannot prepare the SQLite store {self.path}: {exc}") from exc
        try:
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open SQLite database {self.path}: {exc}") from exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"SQLite database {self.path} cannot use WAL mode ({mode})")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA cache_size = -16384")  # 16 MiB: 100k keys' indexes stay cached
            # Deleted keys (and plain secrets replaced by ciphertext) are zeroed, not left in
            # free pages.
            conn.execute("PRAGMA secure_delete = ON")
            run_sync(setup(SqliteDb(conn)))
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StoreError(f"cannot open SQLite database {self.path}: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _private_files(self) -> None:
        """Owner-only modes before SQLite opens anything: the folder (when keygate made it, or it
        is the data directory), the database, and its -wal/-shm/-journal files, which SQLite
        creates with the database's own mode."""
        folder = self.path.parent
        data_dir = self.path.name == DATA_FILE_NAME or not folder.exists()
        if data_dir:
            private_dir(folder)
        create_private(self.path)
        for suffix in ("-wal", "-shm", "-journal"):
            private_file(self.path.with_name(self.path.name + suffix))
        if data_dir:  # whatever else keygate wrote there
            for entry in folder.iterdir():
                if entry.is_file() and not entry.is_symlink():
                    private_file(entry)

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(executor, self._close_sync)
        finally:
            executor.shutdown(wait=True)

    def _close_sync(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.execute("PRAGMA optimize")
        except sqlite3.Error:
            pass  # only planner statistics; closing matters more
        finally:
            conn.close()

    # the dialect: scripts, bulk statements

    async def run_script(self, db: Db, sql: str) -> None:
        for statement in _statements(sql):
            await db.execute(statement)

    async def after_reseal(self, db: Db) -> None:
        # Rebuild the file and empty the WAL so no page with a plain secret survives.
        await db.execute("VACUUM")
        await db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    async def after_import(self, added: int) -> None:
        """SQLite keeps its statistics at close (PRAGMA optimize)."""

    async def find_fingerprints(self, db: Db, provider: str, fps: list[str]) -> dict[str, int]:
        conn = _conn_of(db)
        ids: dict[str, int] = {}
        for chunk in _chunks(fps):
            marks = ",".join("?" * len(chunk))
            ids.update(
                conn.execute(
                    f"SELECT fingerprint, id FROM keys WHERE provider = ? AND fingerprint IN ({marks})",
                    (provider, *chunk),
                ).fetchall()
            )
        return ids

    async def insert_keys(
        self, db: Db, provider: str, source: str, seq: int, rows: list[NewKeyRow]
    ) -> list[tuple[str, int]]:
        conn = _conn_of(db)
        now = time.time()
        conn.executemany(
            "INSERT INTO keys (provider, secret, fingerprint, masked, source, created_at,"
            " updated_seq) VALUES (?, ?, ?, ?, ?, ?, ?)",
            ((provider, sealed, fp, masked, source, now, seq) for sealed, fp, masked in rows),
        )
        # Only this transaction used `seq`, so these are exactly the rows just inserted.
        return conn.execute(
            "SELECT fingerprint, id FROM keys WHERE updated_seq = ?", (seq,)
        ).fetchall()

    async def key_rows(self, db: Db, select: str, ids: list[int]) -> list[Row]:
        conn = _conn_of(db)
        rows: list[Row] = []
        for chunk in _chunks(ids):
            marks = ",".join("?" * len(chunk))
            rows += conn.execute(
                f"{select} WHERE k.id IN ({marks}) ORDER BY k.id", chunk
            ).fetchall()
        return rows

    async def update_health(self, db: Db, seq: int, rows: list[HealthRow]) -> int:
        cur = _conn_of(db).executemany(
            "UPDATE keys SET status = ?2, until = ?3, last_error = ?4, updated_seq = ?5"
            " WHERE id = ?1 AND (status IS NOT ?2 OR until IS NOT ?3 OR last_error IS NOT ?4)",
            [(*r, seq) for r in rows],
        )
        return cur.rowcount

    async def add_counter_rows(
        self, db: Db, keys: list[KeyDelta], providers: list[ProviderDelta]
    ) -> None:
        conn = _conn_of(db)
        # Deltas for keys deleted meanwhile are dropped (EXISTS), not resurrected.
        conn.executemany(
            "INSERT INTO key_stats (key_id, use_count, ok, err_4xx, err_5xx, tokens_in,"
            " tokens_out, last_used) SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8"
            " WHERE EXISTS (SELECT 1 FROM keys WHERE id = ?1)"
            " ON CONFLICT (key_id) DO UPDATE SET"
            " use_count = use_count + excluded.use_count, ok = ok + excluded.ok,"
            " err_4xx = err_4xx + excluded.err_4xx, err_5xx = err_5xx + excluded.err_5xx,"
            " tokens_in = tokens_in + excluded.tokens_in,"
            " tokens_out = tokens_out + excluded.tokens_out,"
            " last_used = MAX(last_used, excluded.last_used)",
            keys,
        )
        conn.executemany(
            "INSERT INTO provider_stats (provider, requests, ok, err_4xx, err_5xx,"
            " tokens_in, tokens_out) VALUES (?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (provider) DO UPDATE SET"
            " requests = requests + excluded.requests, ok = ok + excluded.ok,"
            " err_4xx = err_4xx + excluded.err_4xx, err_5xx = err_5xx + excluded.err_5xx,"
            " tokens_in = tokens_in + excluded.tokens_in,"
            " tokens_out = tokens_out + excluded.tokens_out",
            providers,
        )

    async def reseal(self, db: Db, rows: list[ResealRow]) -> None:
        _conn_of(db).executemany(
            "UPDATE keys SET secret = ?2, fingerprint = ?3 WHERE id = ?1", rows
        )


class SqliteStore(Store):
    """The store core on a `SqliteDriver`, as `create_store` makes it for a file. It adds no
    operation: only its constructor, the file's path, and (for diagnostics and tests) the
    connection and a way to run a function on the store's thread."""

    def __init__(self, path: str | os.PathLike[str], secret_key: str = "") -> None:
        self._sqlite = SqliteDriver(path)
        super().__init__(self._sqlite, secret_key)

    def __repr__(self) -> str:
        return f"SqliteStore({str(self.path)!r})"

    @property
    def path(self) -> Path:
        return self._sqlite.path

    @property
    def _conn(self) -> sqlite3.Connection | None:
        return self._sqlite.conn

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._sqlite.run(fn, *args)
