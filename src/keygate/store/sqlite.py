"""The embedded store: one SQLite file in WAL mode, driven from one dedicated worker thread.

All sqlite3 calls run on a single-thread executor, so the event loop never blocks on disk and the
connection is only ever touched by the thread that made it. Several processes (the server, the
CLI, other instances) can use the same file at once: WAL lets readers run beside a writer, every
write takes the lock up front (BEGIN IMMEDIATE) and waits up to `busy_timeout` for it.

Change feed: every transaction that writes keys, provider overrides or meta takes the next seq
from `change_feed` and stamps it on the rows it touches (`updated_seq`); deletions leave a
tombstone. Counter flushes write `key_stats`/`provider_stats` only and never move the feed.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from keygate.store.base import (
    KEY_SELECT,
    MAX_ERROR_LEN,
    TOMBSTONE_TTL_S,
    Changes,
    DuplicateKey,
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
from keygate.store.files import DATA_FILE_NAME, create_private, private_dir, private_file

T = TypeVar("T")

BUSY_TIMEOUT_MS = 10_000
_CHUNK = 900  # host parameters per IN (...) list, below SQLite's oldest limit of 999


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


class SqliteStore(Store):
    """Store on one SQLite file; safe to share between processes and with the CLI."""

    def __init__(self, path: str | os.PathLike[str], secret_key: str = "") -> None:
        self.path = Path(path)
        self._secret_key = secret_key
        self._cipher: Cipher = Cipher()
        self._conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None
        self.tombstone_ttl_s = TOMBSTONE_TTL_S

    def __repr__(self) -> str:
        return f"SqliteStore({str(self.path)!r})"

    # plumbing

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
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

    @staticmethod
    def _write(conn: sqlite3.Connection, fn: Callable[[], T]) -> T:
        """Run `fn` in one write transaction, taking the lock first so it cannot deadlock."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn()
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result

    @staticmethod
    def _read(conn: sqlite3.Connection, fn: Callable[[], T]) -> T:
        """Run `fn` in one read transaction so several SELECTs see the same snapshot."""
        conn.execute("BEGIN")
        try:
            return fn()
        finally:
            conn.execute("COMMIT")

    @staticmethod
    def _bump(conn: sqlite3.Connection) -> int:
        """Next change-feed seq; only call inside a write transaction."""
        rows = conn.execute(
            "UPDATE change_feed SET seq = seq + 1 WHERE id = 1 RETURNING seq"
        ).fetchall()
        return int(rows[0][0])

    def _record(self, row: Sequence[Any]) -> KeyRecord:
        return record_from_row(row, self._cipher.unseal)

    def _guard_plain_writes(self, conn: sqlite3.Connection) -> None:
        """Refuse to add plain secrets after another process switched the db to encryption."""
        if (
            not self._cipher.encrypted
            and conn.execute("SELECT 1 FROM meta WHERE name = ?", (META_VERIFIER,)).fetchone()
        ):
            raise StoreError(ERR_KEY_REQUIRED)

    # lifecycle

    async def open(self) -> None:
        if self._conn is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="keygate-sqlite")
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._open_sync)
        except BaseException:
            self._executor.shutdown(wait=True)
            self._executor = None
            raise

    def _open_sync(self) -> None:
        migrations = load_migrations("sqlite")
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
            self._migrate(conn, migrations)
            self._setup_cipher(conn)
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

    def _migrate(self, conn: sqlite3.Connection, migrations: list[tuple[int, str, str]]) -> None:
        newest = migrations[-1][0] if migrations else 0

        def applied() -> int:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
            )
            return int(
                conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()[0] or 0
            )

        # Read first without the write lock: an up-to-date database (the usual case) needs none.
        has_table = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
        ).fetchone()
        if has_table:
            current = int(
                conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()[0] or 0
            )
            self._check_version(current, newest)
            if current == newest:
                return

        def apply() -> None:
            current = applied()  # again, under the lock: another process may have migrated
            self._check_version(current, newest)
            for version, name, sql in migrations:
                if version <= current:
                    continue
                for statement in _statements(sql):
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (version, name, time.time()),
                )

        self._write(conn, apply)

    def _check_version(self, current: int, newest: int) -> None:
        if current > newest:
            raise StoreError(
                f"SQLite database {self.path} has schema version {current}, newer than this "
                f"keygate knows ({newest}): upgrade keygate"
            )

    def _setup_cipher(self, conn: sqlite3.Connection) -> None:
        def crypto_meta() -> dict[str, str]:
            marks = ",".join("?" * len(CRYPTO_META))
            rows = conn.execute(
                f"SELECT name, value FROM meta WHERE name IN ({marks})", CRYPTO_META
            ).fetchall()
            return dict(rows)

        cipher, to_write = resolve_cipher(self._secret_key, crypto_meta())
        if not to_write:
            self._cipher = cipher
            return

        def encrypt_in_place() -> tuple[Cipher, int]:
            meta = crypto_meta()
            if meta.get(META_VERIFIER):  # another process switched it on meanwhile
                return resolve_cipher(self._secret_key, meta)[0], 0
            old = Cipher()
            rows = conn.execute("SELECT id, secret FROM keys").fetchall()
            updates = []
            for key_id, stored in rows:
                secret = old.unseal(stored)
                updates.append((cipher.seal(secret), cipher.fingerprint(secret), key_id))
            conn.executemany("UPDATE keys SET secret = ?, fingerprint = ? WHERE id = ?", updates)
            conn.executemany(
                "INSERT INTO meta (name, value, updated_seq) VALUES (?, ?, 0)"
                " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                list(to_write.items()),
            )
            return cipher, len(updates)

        self._cipher, rewritten = self._write(conn, encrypt_in_place)
        if rewritten:
            # Rebuild the file and empty the WAL so no page with a plain secret survives.
            conn.execute("VACUUM")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

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
        return await self._run(self._add_key, provider, secret, label, source)

    def _add_key(
        self, conn: sqlite3.Connection, provider: str, secret: str, label: str, source: str
    ) -> KeyRecord:
        fingerprint = self._cipher.fingerprint(secret)

        def tx() -> KeyRecord:
            self._guard_plain_writes(conn)
            row = conn.execute(
                "SELECT id FROM keys WHERE provider = ? AND fingerprint = ?",
                (provider, fingerprint),
            ).fetchone()
            if row:
                raise DuplicateKey(f"{provider} already has this key (id {row[0]})")
            seq = self._bump(conn)
            cur = conn.execute(
                "INSERT INTO keys (provider, secret, fingerprint, masked, label, source,"
                " created_at, updated_seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    provider,
                    self._cipher.seal(secret),
                    fingerprint,
                    mask(secret),
                    label,
                    source,
                    time.time(),
                    seq,
                ),
            )
            row = conn.execute(f"{KEY_SELECT} WHERE k.id = ?", (cur.lastrowid,)).fetchone()
            return self._record(row)

        return self._write(conn, tx)

    async def add_keys(
        self, provider: str, secrets: list[str], source: str = "api"
    ) -> list[ImportResult]:
        provider = check_provider(provider)
        check_source(source)
        return await self._run(self._add_keys, provider, list(secrets), source)

    def _add_keys(
        self, conn: sqlite3.Connection, provider: str, secrets: list[str], source: str
    ) -> list[ImportResult]:
        cipher = self._cipher
        plan = plan_import(secrets, cipher.fingerprint)
        results, first, plain = plan.results, plan.first, plan.tokens

        def tx() -> dict[str, int]:
            if first:
                self._guard_plain_writes(conn)
            ids: dict[str, int] = {}
            fps = list(first)
            for chunk in _chunks(fps):
                marks = ",".join("?" * len(chunk))
                ids.update(
                    conn.execute(
                        "SELECT fingerprint, id FROM keys WHERE provider = ?"
                        f" AND fingerprint IN ({marks})",
                        (provider, *chunk),
                    ).fetchall()
                )
            for fp in ids:
                results[first[fp]].message = "already stored"
            new = [fp for fp in fps if fp not in ids]
            if not new:
                return ids
            seq = self._bump(conn)
            now = time.time()
            conn.executemany(
                "INSERT INTO keys (provider, secret, fingerprint, masked, source, created_at,"
                " updated_seq) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    (
                        provider,
                        cipher.seal(plain[fp]),
                        fp,
                        results[first[fp]].input,
                        source,
                        now,
                        seq,
                    )
                    for fp in new
                ),
            )
            # Only this transaction used `seq`, so these are exactly the rows just inserted.
            for fp, key_id in conn.execute(
                "SELECT fingerprint, id FROM keys WHERE updated_seq = ?", (seq,)
            ):
                ids[fp] = key_id
                result = results[first[fp]]
                result.status, result.message = "added", ""
            return ids

        return plan.finish(self._write(conn, tx) if first else {})

    async def load_keys(self, provider: str | None = None) -> list[KeyRecord]:
        def fn(conn: sqlite3.Connection) -> list[KeyRecord]:
            if provider is None:
                rows = conn.execute(f"{KEY_SELECT} ORDER BY k.id").fetchall()
            else:
                rows = conn.execute(
                    f"{KEY_SELECT} WHERE k.provider = ? ORDER BY k.id", (provider,)
                ).fetchall()
            return [self._record(r) for r in rows]

        return await self._run(fn)

    async def get_keys(self, ids: list[int]) -> list[KeyRecord]:
        wanted = sorted({int(i) for i in ids})
        if not wanted:
            return []

        def fn(conn: sqlite3.Connection) -> list[KeyRecord]:
            out: list[KeyRecord] = []
            for chunk in _chunks(wanted):
                marks = ",".join("?" * len(chunk))
                rows = conn.execute(
                    f"{KEY_SELECT} WHERE k.id IN ({marks}) ORDER BY k.id", chunk
                ).fetchall()
                out.extend(self._record(r) for r in rows)
            return out

        return await self._run(fn)

    async def list_keys(
        self,
        provider: str | None = None,
        status: str | None = None,
        q: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[KeyRecord], int]:
        where: list[str] = []
        params: list[Any] = []
        if provider:
            where.append("k.provider = ?")
            params.append(provider)
        if status:
            where.append("k.status = ?")
            params.append(status)
        q = (q or "").strip()
        fingerprint = self._cipher.fingerprint(q) if q and not check_secret(q) else ""
        limit = max(0, int(limit))
        offset = max(0, int(offset))

        def fn(conn: sqlite3.Connection) -> tuple[list[KeyRecord], int]:
            def read() -> tuple[list[KeyRecord], int]:
                conds, args = list(where), list(params)
                source = "keys k"
                if q:
                    # Label or masked form, case-insensitive (ASCII); or the whole secret pasted
                    # in, matched through its fingerprint so nothing is decrypted. The covering
                    # index keeps the scan off the table rows and their long secrets.
                    source = "keys k INDEXED BY keys_search"
                    pattern = like_pattern(q)
                    match = ["k.label LIKE ? ESCAPE '\\'", "k.masked LIKE ? ESCAPE '\\'"]
                    args += [pattern, pattern]
                    exact = (
                        [
                            r[0]
                            for r in conn.execute(
                                "SELECT id FROM keys WHERE fingerprint = ?", (fingerprint,)
                            )
                        ]
                        if fingerprint
                        else []
                    )
                    if exact:
                        match.append(f"k.id IN ({','.join(str(int(i)) for i in exact)})")
                    conds.append(f"({' OR '.join(match)})")
                clause = f" WHERE {' AND '.join(conds)}" if conds else ""
                total = conn.execute(f"SELECT COUNT(*) FROM {source}{clause}", args).fetchone()[0]
                if not q:
                    rows = conn.execute(
                        f"{KEY_SELECT}{clause} ORDER BY k.id DESC LIMIT ? OFFSET ?",
                        (*args, limit, offset),
                    ).fetchall()
                    return [self._record(r) for r in rows], int(total)
                ids = [
                    r[0]
                    for r in conn.execute(
                        f"SELECT k.id FROM {source}{clause} ORDER BY k.id DESC LIMIT ? OFFSET ?",
                        (*args, limit, offset),
                    )
                ]
                if not ids:
                    return [], int(total)
                marks = ",".join("?" * len(ids))
                rows = conn.execute(
                    f"{KEY_SELECT} WHERE k.id IN ({marks}) ORDER BY k.id DESC", ids
                ).fetchall()
                return [self._record(r) for r in rows], int(total)

            return self._read(conn, read)

        return await self._run(fn)

    async def update_key(self, key_id: int, **fields: Any) -> KeyRecord | None:
        values = check_fields(fields)

        def fn(conn: sqlite3.Connection) -> KeyRecord | None:
            def tx() -> KeyRecord | None:
                if not conn.execute("SELECT 1 FROM keys WHERE id = ?", (key_id,)).fetchone():
                    return None
                if values:
                    seq = self._bump(conn)
                    sets = ", ".join(f"{name} = ?" for name in values)
                    conn.execute(
                        f"UPDATE keys SET {sets}, updated_seq = ? WHERE id = ?",
                        (*values.values(), seq, key_id),
                    )
                row = conn.execute(f"{KEY_SELECT} WHERE k.id = ?", (key_id,)).fetchone()
                return self._record(row)

            return self._write(conn, tx)

        return await self._run(fn)

    async def delete_key(self, key_id: int) -> bool:
        def fn(conn: sqlite3.Connection) -> bool:
            def tx() -> bool:
                if not conn.execute("DELETE FROM keys WHERE id = ?", (key_id,)).rowcount:
                    return False
                conn.execute("DELETE FROM key_stats WHERE key_id = ?", (key_id,))
                seq = self._bump(conn)
                now = time.time()
                conn.execute(
                    "INSERT OR REPLACE INTO deleted_keys (key_id, seq, deleted_at)"
                    " VALUES (?, ?, ?)",
                    (key_id, seq, now),
                )
                pruned = conn.execute(
                    "DELETE FROM deleted_keys WHERE deleted_at < ? RETURNING seq",
                    (now - self.tombstone_ttl_s,),
                ).fetchall()
                if pruned:
                    conn.execute(
                        "UPDATE change_feed SET pruned_seq = MAX(pruned_seq, ?) WHERE id = 1",
                        (max(s for (s,) in pruned),),
                    )
                return True

            return self._write(conn, tx)

        return await self._run(fn)

    async def save_health(self, updates: list[tuple[int, str, float, str]]) -> None:
        rows = []
        for key_id, status, until, last_error in updates:
            rows.append(
                (
                    check_status(status),
                    check_number("until", until, integer=False),
                    str(last_error or "")[:MAX_ERROR_LEN],
                    int(key_id),
                )
            )
        if not rows:
            return

        def fn(conn: sqlite3.Connection) -> None:
            def tx() -> int:
                seq = self._bump(conn)
                # Rows whose health did not change are skipped: echoes of a change another
                # instance made (and that we learnt from the feed) do not bounce back into it.
                cur = conn.executemany(
                    "UPDATE keys SET status = ?1, until = ?2, last_error = ?3, updated_seq = ?5"
                    " WHERE id = ?4 AND (status IS NOT ?1 OR until IS NOT ?2"
                    " OR last_error IS NOT ?3)",
                    [(*r, seq) for r in rows],
                )
                return cur.rowcount

            conn.execute("BEGIN IMMEDIATE")
            try:
                changed = tx()
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            # Nothing changed: roll back so the feed does not move.
            conn.execute("COMMIT" if changed else "ROLLBACK")

        await self._run(fn)

    # counters

    async def add_counters(
        self,
        key_deltas: list[tuple[int, int, int, int, int, int, int, float]],
        provider_deltas: dict[str, tuple[int, int, int, int, int, int]],
    ) -> None:
        key_rows = [(*(int(v) for v in d[:7]), float(d[7]), int(d[0])) for d in key_deltas]
        provider_rows = [(name, *(int(v) for v in d)) for name, d in provider_deltas.items()]
        if not key_rows and not provider_rows:
            return

        def fn(conn: sqlite3.Connection) -> None:
            def tx() -> None:
                # Deltas for keys deleted meanwhile are dropped (EXISTS), not resurrected.
                conn.executemany(
                    "INSERT INTO key_stats (key_id, use_count, ok, err_4xx, err_5xx, tokens_in,"
                    " tokens_out, last_used) SELECT ?, ?, ?, ?, ?, ?, ?, ?"
                    " WHERE EXISTS (SELECT 1 FROM keys WHERE id = ?)"
                    " ON CONFLICT (key_id) DO UPDATE SET"
                    " use_count = use_count + excluded.use_count, ok = ok + excluded.ok,"
                    " err_4xx = err_4xx + excluded.err_4xx, err_5xx = err_5xx + excluded.err_5xx,"
                    " tokens_in = tokens_in + excluded.tokens_in,"
                    " tokens_out = tokens_out + excluded.tokens_out,"
                    " last_used = MAX(last_used, excluded.last_used)",
                    key_rows,
                )
                conn.executemany(
                    "INSERT INTO provider_stats (provider, requests, ok, err_4xx, err_5xx,"
                    " tokens_in, tokens_out) VALUES (?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (provider) DO UPDATE SET"
                    " requests = requests + excluded.requests, ok = ok + excluded.ok,"
                    " err_4xx = err_4xx + excluded.err_4xx, err_5xx = err_5xx + excluded.err_5xx,"
                    " tokens_in = tokens_in + excluded.tokens_in,"
                    " tokens_out = tokens_out + excluded.tokens_out",
                    provider_rows,
                )

            self._write(conn, tx)

        await self._run(fn)

    async def provider_totals(self) -> dict[str, dict[str, int]]:
        names = ("requests", "ok", "err_4xx", "err_5xx", "tokens_in", "tokens_out")

        def fn(conn: sqlite3.Connection) -> dict[str, dict[str, int]]:
            rows = conn.execute(f"SELECT provider, {', '.join(names)} FROM provider_stats")
            return {r[0]: dict(zip(names, r[1:], strict=True)) for r in rows}

        return await self._run(fn)

    async def key_counts(self) -> dict[str, dict[str, int]]:
        def fn(conn: sqlite3.Connection) -> dict[str, dict[str, int]]:
            out: dict[str, dict[str, int]] = {}
            for provider, status, n in conn.execute(
                "SELECT provider, status, COUNT(*) FROM keys GROUP BY provider, status"
            ):
                out.setdefault(provider, {})[status] = n
            return out

        return await self._run(fn)

    # provider overrides and meta

    async def get_provider_overrides(self) -> dict[str, dict[str, Any]]:
        def fn(conn: sqlite3.Connection) -> dict[str, dict[str, Any]]:
            out = {}
            for name, data in conn.execute("SELECT name, data FROM provider_overrides"):
                value = json.loads(data)
                if value:
                    out[name] = value
            return out

        return await self._run(fn)

    async def set_provider_override(self, name: str, fields: dict[str, Any]) -> None:
        name = check_provider(name)
        try:
            json.dumps(fields)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"provider override for {name} is not JSON: {exc}") from exc

        def fn(conn: sqlite3.Connection) -> None:
            def tx() -> None:
                row = conn.execute(
                    "SELECT data FROM provider_overrides WHERE name = ?", (name,)
                ).fetchone()
                merged = json.loads(row[0]) if row else {}
                for field, value in fields.items():
                    if value is None:
                        merged.pop(field, None)
                    else:
                        merged[field] = value
                seq = self._bump(conn)
                conn.execute(
                    "INSERT INTO provider_overrides (name, data, updated_seq) VALUES (?, ?, ?)"
                    " ON CONFLICT (name) DO UPDATE SET data = excluded.data,"
                    " updated_seq = excluded.updated_seq",
                    (name, json.dumps(merged, sort_keys=True), seq),
                )

            self._write(conn, tx)

        await self._run(fn)

    async def get_meta(self, name: str) -> str | None:
        def fn(conn: sqlite3.Connection) -> str | None:
            row = conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
            return None if row is None else str(row[0])

        return await self._run(fn)

    async def set_meta(self, name: str, value: str) -> None:
        if name in CRYPTO_META:
            raise ValueError(f"meta {name} is managed by the store")
        if not isinstance(value, str):
            raise ValueError(f"meta {name} must be text")

        def fn(conn: sqlite3.Connection) -> None:
            def tx() -> None:
                seq = self._bump(conn)
                conn.execute(
                    "INSERT INTO meta (name, value, updated_seq) VALUES (?, ?, ?)"
                    " ON CONFLICT (name) DO UPDATE SET value = excluded.value,"
                    " updated_seq = excluded.updated_seq",
                    (name, value, seq),
                )

            self._write(conn, tx)

        await self._run(fn)

    # admin sessions

    async def revoke_session(self, session_id: str, expires_at: float) -> None:
        check_session_id(session_id)
        until = float(check_number("expires_at", expires_at, integer=False))

        def fn(conn: sqlite3.Connection) -> None:
            def tx() -> None:
                conn.execute("DELETE FROM revoked_sessions WHERE expires_at <= ?", (time.time(),))
                conn.execute(
                    "INSERT INTO revoked_sessions (session_id, expires_at) VALUES (?, ?)"
                    " ON CONFLICT (session_id) DO UPDATE SET"
                    " expires_at = MAX(expires_at, excluded.expires_at)",
                    (session_id, until),
                )

            self._write(conn, tx)

        await self._run(fn)

    async def session_revoked(self, session_id: str) -> bool:
        check_session_id(session_id)

        def fn(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "SELECT 1 FROM revoked_sessions WHERE session_id = ? AND expires_at > ?",
                (session_id, time.time()),
            ).fetchone()
            return row is not None

        return await self._run(fn)

    # change feed

    async def changes_since(self, seq: int) -> Changes:
        seq = int(seq)

        def fn(conn: sqlite3.Connection) -> Changes:
            def read() -> Changes:
                current, pruned = conn.execute(
                    "SELECT seq, pruned_seq FROM change_feed WHERE id = 1"
                ).fetchone()
                if seq < pruned or seq > current:
                    # Deletions before `pruned` are forgotten, or this is another database:
                    # hand back every key and ask for a full reload.
                    ids = [r[0] for r in conn.execute("SELECT id FROM keys ORDER BY id")]
                    return Changes(current, ids, [], True, full=True)
                key_ids = [
                    r[0]
                    for r in conn.execute(
                        "SELECT id FROM keys WHERE updated_seq > ? ORDER BY id", (seq,)
                    )
                ]
                deleted = [
                    r[0]
                    for r in conn.execute(
                        "SELECT key_id FROM deleted_keys WHERE seq > ? ORDER BY key_id", (seq,)
                    )
                ]
                providers_changed = bool(
                    conn.execute(
                        "SELECT EXISTS (SELECT 1 FROM provider_overrides WHERE updated_seq > ?)"
                        " OR EXISTS (SELECT 1 FROM meta WHERE updated_seq > ?)",
                        (seq, seq),
                    ).fetchone()[0]
                )
                return Changes(current, key_ids, deleted, providers_changed)

            return self._read(conn, read)

        return await self._run(fn)

    async def current_seq(self) -> int:
        def fn(conn: sqlite3.Connection) -> int:
            return int(conn.execute("SELECT seq FROM change_feed WHERE id = 1").fetchone()[0])

        return await self._run(fn)
