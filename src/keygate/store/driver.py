"""What a backend is to the store: a driver object the core holds, described by `Driver`.

The core (`store.core` and the job modules beside it) writes every operation once, as SQL with
`$1, $2, ...` placeholders run through the driver's sessions. A driver (`store.sqlite`,
`store.postgres`) supplies only what really differs between the databases:

- the connection's life: `open(setup)` connects and runs the core's `setup(db)` (migrations,
  the cipher) on one connection; `close()`;
- sessions: `plain`, `read` (one snapshot) and `write` (one transaction; a body raising
  `Rollback(result)` is rolled back and answers `result`), each running `body(db)` on one
  connection, and `offload` for CPU work outside any session;
- the dialect: a few SQL fragments (`Dialect`), how a migration script runs, the clean-up after
  the switch to encryption, and the bulk statements (`executemany` and `IN` chunks against
  `unnest` of arrays).

Bodies are coroutines that await only `db`. The SQLite driver runs them to completion on its
own thread without an event loop (its `db` never suspends), so a whole operation is one hop to
that thread.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, runtime_checkable

from keygate.store.records import StoreError

T = TypeVar("T")

Row = Sequence[Any]  # one result row, read by position
PROVIDER_COUNTERS = ("requests", "ok", "err_4xx", "err_5xx", "tokens_in", "tokens_out")
KeyDelta = tuple[int, int, int, int, int, int, int, float]  # id, six counters, last_used
ProviderDelta = tuple[str, int, int, int, int, int, int]  # name, PROVIDER_COUNTERS
HealthRow = tuple[int, str, float, str]  # id, status, until, last_error
NewKeyRow = tuple[str, str, str]  # sealed secret, fingerprint, masked
ResealRow = tuple[int, str, str]  # id, sealed secret, fingerprint


class Db(Protocol):
    """One connection inside a session, as the core sees it."""

    async def fetch(self, sql: str, *args: Any) -> list[Row]: ...

    async def fetchrow(self, sql: str, *args: Any) -> Row | None: ...

    async def fetchval(self, sql: str, *args: Any) -> Any: ...

    async def execute(self, sql: str, *args: Any) -> int:
        """Run one statement; the rows it touched."""

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...

    async def offload(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` without blocking the event loop (CPU work: key derivation, decryption)."""

    def exclusive(self) -> AbstractAsyncContextManager[None]:
        """One transaction that holds the schema lock (migrations, the switch to encryption)."""


Body = Callable[[Db], Coroutine[Any, Any, T]]


class Rollback(Exception):
    """Raised inside a write body to roll it back (nothing changed) and still answer `result`."""

    def __init__(self, result: Any) -> None:
        super().__init__("rollback")
        self.result = result


@dataclass(frozen=True, slots=True)
class Dialect:
    """The SQL fragments where the two databases differ, used by the core's statements."""

    name: str  # migrations/<name>/NNNN_*.sql
    greatest: str  # the two-argument maximum
    ilike: str  # case-insensitive LIKE
    search_from: str  # the table (and index) the admin search scans
    for_update: str  # row lock on a read-modify-write, where rows can be locked
    hold_feed: str  # run in `exclusive()` before the switch to encryption, if needed
    has_migrations: str  # one row/true when schema_migrations exists
    # (key_id, day, requests, tokens): add to the same day, replace an older one, drop a
    # deleted key's row (the SET expressions all read the row as it was)
    day_upsert: str


@runtime_checkable
class Driver(Protocol):
    """A database backend as the store core holds it (see the module doc)."""

    @property
    def dialect(self) -> Dialect: ...

    @property
    def where(self) -> str:
        """The database for messages ("SQLite database /path"), password masked."""

    # the connection's life

    async def open(self, setup: Body[None]) -> None:
        """Connect (creating the database if needed) and run `setup(db)` once on the new
        connection; a failed setup leaves the driver closed. No-op when already open."""

    async def close(self) -> None:
        """Release the connection; safe to call twice."""

    # sessions

    async def plain(self, body: Body[T]) -> T:
        """`body(db)` on one connection, each statement on its own."""

    async def read(self, body: Body[T]) -> T:
        """`body(db)` in one read snapshot, so several SELECTs agree."""

    async def write(self, body: Body[T]) -> T:
        """`body(db)` in one write transaction; `Rollback(result)` rolls back, answers result."""

    async def offload(self, fn: Callable[[], T]) -> T:
        """`fn()` off the event loop, outside any session (batch hashing/encryption)."""

    # the dialect

    async def run_script(self, db: Db, sql: str) -> None:
        """Apply one migration script inside the current transaction."""

    async def after_reseal(self, db: Db) -> None:
        """Leave no plain secret in free pages after the switch to encryption."""

    async def after_import(self, added: int) -> None:
        """Housekeeping after a batch import (fresh planner statistics)."""

    async def find_fingerprints(self, db: Db, provider: str, fps: list[str]) -> dict[str, int]:
        """{fingerprint: id} of the provider's keys among `fps`."""

    async def insert_keys(
        self, db: Db, provider: str, source: str, seq: int, rows: list[NewKeyRow]
    ) -> list[tuple[str, int]]:
        """Insert (sealed, fingerprint, masked) rows in order; (fingerprint, id) of those added."""

    async def key_rows(self, db: Db, select: str, ids: list[int]) -> list[Row]:
        """Rows of `select` (the key query, `k` the keys table, no WHERE yet) for the keys
        among the sorted `ids`, in id order."""

    async def update_health(self, db: Db, seq: int, rows: list[HealthRow]) -> int:
        """Set (id, status, until, last_error) where it differs, stamped `seq`; rows changed."""

    async def add_counter_rows(
        self, db: Db, keys: list[KeyDelta], providers: list[ProviderDelta]
    ) -> None:
        """Add one delta row per key (sorted, existing keys only) and per provider."""

    async def reseal(self, db: Db, rows: list[ResealRow]) -> None:
        """Set (id, secret, fingerprint) on every key (the switch to encryption)."""


def one(row: Row | None, what: str) -> Row:
    """A row that must exist (the change feed's own row, a row just written)."""
    if row is None:
        raise StoreError(f"the database has no {what}: it was changed outside keygate")
    return row
