"""Schema migrations: the bundled scripts (`migrations/<dialect>/NNNN_name.sql`) and how they
are applied at open — read first without a lock (an up-to-date database, the usual case, needs
none), then under the schema lock, each script and its row in `schema_migrations` in one
transaction with the others. The driver runs each script (`Driver.run_script`)."""

from __future__ import annotations

import re
import time
from importlib import resources

from keygate.store.driver import Db, Driver
from keygate.store.records import StoreError

MIGRATION_RE = re.compile(r"^(\d{4})_(\w+)\.sql$")
Migration = tuple[int, str, str]  # version, file name, sql


def load_migrations(dialect: str) -> list[Migration]:
    """(version, name, sql) of every bundled migration for `dialect`, in order, numbered
    0001.. without gaps."""
    folder = resources.files("keygate.store").joinpath("migrations").joinpath(dialect)
    found: list[Migration] = []
    for entry in folder.iterdir():
        m = MIGRATION_RE.match(entry.name)
        if m:
            found.append((int(m.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    found.sort()
    versions = [v for v, _, _ in found]
    if versions != list(range(1, len(versions) + 1)):
        raise StoreError(f"{dialect} migrations are not numbered 0001.. without gaps: {versions}")
    return found


async def migrate(driver: Driver, db: Db, migrations: list[Migration]) -> None:
    """Bring the database on `db` up to the newest of `migrations`; refuse a newer schema."""
    newest = migrations[-1][0] if migrations else 0
    applied = "SELECT COALESCE(MAX(version), 0) FROM schema_migrations"
    # Read first without the lock: an up-to-date database (the usual case) needs none.
    if await db.fetchval(driver.dialect.has_migrations):
        current = int(await db.fetchval(applied))
        _check_version(driver.where, current, newest)
        if current == newest:
            return
    async with db.exclusive():
        await db.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
            " applied_at DOUBLE PRECISION NOT NULL)"
        )
        current = int(await db.fetchval(applied))  # again, under the lock
        _check_version(driver.where, current, newest)
        for version, name, sql in migrations:
            if version <= current:
                continue
            await driver.run_script(db, sql)
            await db.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
                version,
                name,
                time.time(),
            )


def _check_version(where: str, current: int, newest: int) -> None:
    if current > newest:
        raise StoreError(
            f"{where} has schema version {current}, newer than this "
            f"keygate knows ({newest}): upgrade keygate"
        )
