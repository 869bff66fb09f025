"""The persistent store: one core (`Store`) holding a database driver, picked from the database
location once, at start-up (`create_store`)."""

from __future__ import annotations

from pathlib import Path

from keygate.store.base import (
    Changes,
    DuplicateKey,
    ImportResult,
    InvalidKey,
    KeyRecord,
    Store,
    StoreError,
    mask,
    parse_key_input,
)

__all__ = [
    "Changes",
    "DuplicateKey",
    "ImportResult",
    "InvalidKey",
    "KeyRecord",
    "Store",
    "StoreError",
    "create_store",
    "mask",
    "parse_key_input",
    "sqlite_path",
]


def sqlite_path(db_location: str) -> Path | None:
    """The file a `sqlite:///ABS/PATH` location (or a bare file path) names; None if not SQLite."""
    if db_location.startswith("sqlite://"):
        rest = db_location[len("sqlite://") :]
        if rest.startswith("//"):  # sqlite:////abs/path, the SQLAlchemy spelling
            rest = rest[1:]
        if not rest or rest == "/":
            raise StoreError(f"no database file in {db_location!r}")
        return Path(rest)
    if "://" in db_location:
        return None
    return Path(db_location) if db_location else None


def create_store(db_location: str, secret_key: str = "") -> Store:
    """A closed store for `db_location` (sqlite:///… or postgresql://…); call open() next."""
    location = db_location.strip()
    if location.startswith(("postgresql://", "postgres://")):
        try:
            from keygate.store.postgres import PostgresStore
        except ImportError as exc:
            raise StoreError("PostgreSQL store not available") from exc
        return PostgresStore(location, secret_key=secret_key)
    path = sqlite_path(location)
    if path is None:
        scheme = location.split("://", 1)[0] if "://" in location else location
        raise StoreError(
            f"unknown database location {scheme!r}: use sqlite:///PATH or postgresql://…"
        )
    from keygate.store.sqlite import SqliteStore

    return SqliteStore(path, secret_key=secret_key)
