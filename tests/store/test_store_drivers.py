"""The store is one core holding a driver: SQLite and PostgreSQL are drivers (`Driver`), not
subclasses of the core, and the core runs every operation over whichever driver it holds."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from keygate.store import Store, create_store
from keygate.store.driver import Body, Driver
from keygate.store.postgres import PostgresDriver, PostgresStore
from keygate.store.sqlite import SqliteDriver, SqliteStore

DSN = "postgresql://keygate:secret@localhost:1/keygate"  # never connected to


def _protocol_members() -> dict[str, Any]:
    return {
        name: value
        for name, value in vars(Driver).items()
        if not name.startswith("_") and (callable(value) or isinstance(value, property))
    }


def test_both_backends_are_drivers(tmp_path: Path) -> None:
    members = _protocol_members()
    assert {"dialect", "where", "open", "close", "plain", "read", "write"} <= set(members)
    for driver in (SqliteDriver(tmp_path / "a.db"), PostgresDriver(DSN)):
        assert isinstance(driver, Driver)
        assert type(driver).__mro__ == (type(driver), object)  # no store class above it
        for name, spec in members.items():
            have = getattr(type(driver), name)
            if isinstance(spec, property):
                continue
            assert inspect.iscoroutinefunction(have) == inspect.iscoroutinefunction(spec), name
            want = list(inspect.signature(spec).parameters)
            assert list(inspect.signature(have).parameters) == want, name
    assert SqliteDriver.dialect.name == "sqlite" and PostgresDriver.dialect.name == "postgres"
    assert "secret" not in PostgresDriver(DSN).where  # the password stays masked


def test_the_core_has_no_backend_base_class() -> None:
    assert Store.__mro__ == (Store, object)
    for driver in (SqliteDriver, PostgresDriver):
        assert not issubclass(Store, driver) and not issubclass(driver, Store)


def test_create_store_gives_the_core_holding_a_driver(tmp_path: Path) -> None:
    sqlite = create_store(f"sqlite:///{tmp_path / 'k.db'}")
    postgres = create_store(DSN)
    assert isinstance(sqlite.driver, SqliteDriver) and isinstance(postgres.driver, PostgresDriver)
    assert isinstance(sqlite, Store) and isinstance(postgres, Store)
    # SqliteStore and PostgresStore only bind a driver: every operation is the core's own.
    operations = [n for n, v in vars(Store).items() if not n.startswith("_") and callable(v)]
    assert len(operations) > 30
    for preset in (SqliteStore, PostgresStore):
        assert preset.__bases__ == (Store,)
        for name in operations:
            assert getattr(preset, name) is getattr(Store, name), f"{preset.__name__}.{name}"


class CountingDriver:
    """Any object that is a `Driver` will do: here the SQLite one, its writes counted."""

    def __init__(self, inner: SqliteDriver) -> None:
        self.inner = inner
        self.writes = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def write(self, body: Body[Any]) -> Any:
        self.writes += 1
        return await self.inner.write(body)


async def test_the_core_runs_over_any_driver(tmp_path: Path) -> None:
    driver = CountingDriver(SqliteDriver(tmp_path / "c.db"))
    assert isinstance(driver, Driver)
    store = Store(driver, "a passphrase")
    await store.open()
    try:
        rec = await store.add_key("groq", "gsk_" + "x" * 40, label="held")
        await store.update_key(rec.id, label="still held")
        assert driver.writes == 2
        [got] = await store.load_keys()
        assert (got.id, got.secret, got.label) == (rec.id, "gsk_" + "x" * 40, "still held")
        assert (await store.changes_since(0)).key_ids == [rec.id]
    finally:
        await store.close()
    again = create_store(f"sqlite:///{tmp_path / 'c.db'}", "a passphrase")
    await again.open()
    try:
        assert [k.label for k in await again.load_keys()] == ["still held"]
    finally:
        await again.close()
