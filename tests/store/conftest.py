"""Store fixtures, parametrized by backend so every store test runs against each of them.

To add a backend: write an async context manager `(tmp_path) -> location` that yields a fresh,
empty database for one test (and drops it afterwards), register it in DATABASES and name it in
STORE_BACKENDS (e.g. only when its binaries are available).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import pytest

from keygate.store import Store, create_store


@asynccontextmanager
async def sqlite_database(tmp_path: Path) -> AsyncIterator[str]:
    """A fresh SQLite file per test."""
    yield f"sqlite:///{tmp_path / 'data' / 'keygate.db'}"


DATABASES: dict[str, Callable[[Path], AbstractAsyncContextManager[str]]] = {
    "sqlite": sqlite_database,
}
STORE_BACKENDS = ["sqlite"]

OpenStore = Callable[..., Awaitable[Store]]


@pytest.fixture(params=STORE_BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Name of the backend under test."""
    return str(request.param)


@pytest.fixture
async def db_location(backend: str, tmp_path: Path) -> AsyncIterator[str]:
    """The test's own empty database, as a location for create_store."""
    async with DATABASES[backend](tmp_path) as location:
        yield location


@pytest.fixture
async def open_store(db_location: str) -> AsyncIterator[OpenStore]:
    """Open another store object on the test's database (as the CLI or a 2nd instance would)."""
    opened: list[Store] = []

    async def _open(secret_key: str = "") -> Store:
        s = create_store(db_location, secret_key)
        await s.open()
        opened.append(s)
        return s

    yield _open
    for s in reversed(opened):
        await s.close()


@pytest.fixture
async def store(open_store: OpenStore) -> Store:
    """An open store on an empty database, no encryption."""
    return await open_store()
