"""Store fixtures, parametrized by backend so every store test runs against each of them.

To add a backend: write an async context manager `(request, tmp_path) -> location` that yields a
fresh, empty database for one test (and drops it afterwards), register it in DATABASES and name it
in STORE_BACKENDS. A backend whose server binaries are missing stays in the list but its tests
skip (CI installs them, so there they run).

PostgreSQL: one throwaway cluster per session (`servers.start_postgres`, on a free loopback port),
a new database per test, dropped afterwards.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import asyncpg
import pytest

from keygate.store import Store, create_store
from servers import PostgresServer, postgres_bin, start_postgres


@asynccontextmanager
async def sqlite_database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh SQLite file per test."""
    yield f"sqlite:///{tmp_path / 'data' / 'keygate.db'}"


_db_numbers = itertools.count(1)


@asynccontextmanager
async def postgres_database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh database per test on the session's PostgreSQL cluster."""
    server: PostgresServer = request.getfixturevalue("postgres_server")
    name = f"keygate_test_{next(_db_numbers)}"
    admin = await asyncpg.connect(server.dsn)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    try:
        yield server.database_dsn(name)
    finally:
        admin = await asyncpg.connect(server.dsn)
        try:
            await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        finally:
            await admin.close()


DATABASES: dict[str, Callable[[pytest.FixtureRequest, Path], AbstractAsyncContextManager[str]]] = {
    "sqlite": sqlite_database,
    "postgres": postgres_database,
}
STORE_BACKENDS = [
    "sqlite",
    pytest.param(
        "postgres",
        marks=[
            pytest.mark.postgres,
            pytest.mark.skipif(postgres_bin() is None, reason="PostgreSQL binaries not installed"),
        ],
    ),
]


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL cluster for the whole session, stopped and removed at the end."""
    server = start_postgres(tmp_path_factory.mktemp("postgres"))
    try:
        yield server
    finally:
        server.stop()


OpenStore = Callable[..., Awaitable[Store]]


@pytest.fixture(params=STORE_BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Name of the backend under test."""
    return str(request.param)


@pytest.fixture
async def db_location(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[str]:
    """The test's own empty database, as a location for create_store."""
    async with DATABASES[backend](request, tmp_path) as location:
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
