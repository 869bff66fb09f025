"""PostgreSQL with more than one host (SPEC §21): a primary and a streaming standby on loopback,
keygate given both in one URL with `target_session_attrs=read-write`.

The primary is stopped (a fast shutdown: everything it committed reaches the standby first, as
in a planned switch), then the standby is promoted. In between no host is writable: an admin
write answers 503 `store_unavailable` and is not stored, traffic goes on and its counters wait in
memory. Afterwards keygate is on the new primary: an admin write is stored, and the counters of
the gap arrive exactly once (asserted on the stored totals against what the mock upstream saw).

Below, smaller parts: a pooled connection whose server turned read-only is dropped, not reused
(on a cluster of its own); the multi-host URL's validation; a flush whose commit went through
although the store answered with an error is not counted twice (SQLite, no server needed); and
the flush's mark on both stores.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from harness import eventually, eventually_async, fire, wait_log
from keygate.config.settings import ConfigError, load_settings
from keygate.store import create_store
from keygate.store.base import StoreUnavailable
from keygate.testing.mock_upstream import MockUpstream
from servers import PostgresServer, free_port, postgres_bin, start_postgres

UNLIMITED = {
    "providers": {
        "cerebras": {"rps": 0, "max_conn": 0, "queue": 1000, "retries": 0, "affinity": "off"}
    }
}
needs_postgres = [
    pytest.mark.postgres,
    pytest.mark.skipif(postgres_bin() is None, reason="PostgreSQL binaries not installed"),
]


def make_key(tag: str) -> str:
    return f"sk-{tag}-{secrets.token_hex(12)}"


def _pg(server: PostgresServer, *args: str, timeout: float = 60) -> None:
    proc = subprocess.run(
        [*server.prefix, str(server.bin_dir / "pg_ctl"), "-D", str(server.data_dir), *args],
        capture_output=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace") + server.log()


def start_standby(primary: PostgresServer) -> PostgresServer:
    """A streaming standby of `primary` (`pg_basebackup -R`) on a free loopback port."""
    prefix, bin_dir = primary.prefix, primary.bin_dir
    data_dir = Path(tempfile.mkdtemp(prefix="keygate-pg-standby-"))
    if prefix:
        shutil.chown(data_dir, "postgres", "postgres")
    data_dir.chmod(0o700)
    backup = [str(bin_dir / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(primary.port)]
    into = ["-U", "postgres", "-D", str(data_dir), "-R", "-X", "stream", "-c", "fast"]
    subprocess.run([*prefix, *backup, *into], check=True, capture_output=True, timeout=60)
    port = free_port()
    options = (
        f"-p {port} -k {data_dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        " -c max_connections=200"  # at least the primary's, or recovery refuses to start
    )
    standby = PostgresServer(data_dir, port, bin_dir, prefix, own_dir=True)
    try:
        _pg(standby, "-o", options, "-l", str(data_dir / "server.log"), "-w", "-t", "60", "start")
    except BaseException:
        standby.stop()
        raise
    return standby


@pytest.fixture
def primary_and_standby(tmp_path: Path) -> Iterator[tuple[PostgresServer, PostgresServer]]:
    primary = start_postgres(tmp_path)
    try:
        asyncio.run(_create_database(primary.dsn, "keygate"))
        standby = start_standby(primary)
        try:
            yield primary, standby
        finally:
            standby.stop()
    finally:
        primary.stop()


async def _create_database(dsn: str, name: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()


async def _fetchval(server: PostgresServer, sql: str, *args: Any) -> Any:
    conn = await asyncpg.connect(server.database_dsn("keygate"), timeout=5)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


async def stored_requests(server: PostgresServer) -> tuple[int, int]:
    """(provider requests, sum of the keys' use counts) as `server` holds them."""
    provider = await _fetchval(
        server, "SELECT COALESCE(SUM(requests), 0) FROM provider_stats WHERE provider = 'cerebras'"
    )
    keys = await _fetchval(server, "SELECT COALESCE(SUM(use_count), 0) FROM key_stats")
    return int(provider), int(keys)


async def stored_label(server: PostgresServer, label: str) -> int:
    return int(await _fetchval(server, "SELECT COUNT(*) FROM keys WHERE label = $1", label))


def post_key(gw: Any, label: str, cookies: httpx.Cookies | None = None) -> httpx.Response:
    """Add a key labelled `label` with the admin password, or the page's session cookie."""
    body = {"provider": "cerebras", "key": make_key(label), "label": label}
    headers = {"x-keygate-csrf": "1"} if cookies else gw.admin()
    with gw.client(timeout=15, cookies=cookies) as c:
        return c.post("/api/keys", json=body, headers=headers)


def log_in(gw: Any) -> httpx.Cookies:
    with gw.client(timeout=15) as c:
        r = c.post("/api/session", json={"password": gw.admin_password})
        assert r.status_code == 200, r.text
        return c.cookies


@pytest.mark.parametrize("_", [pytest.param(None, marks=needs_postgres)], ids=["postgres"])
async def test_primary_goes_away_standby_promoted_keygate_follows(
    _: None,
    primary_and_standby: tuple[PostgresServer, PostgresServer],
    gateway_factory: Any,
    mock: MockUpstream,
) -> None:
    primary, standby = primary_and_standby
    dsn = (
        f"postgresql://postgres@127.0.0.1:{primary.port},127.0.0.1:{standby.port}/keygate"
        "?target_session_attrs=read-write"
    )
    keys = [make_key("fo0"), make_key("fo1")]
    env = {"KEYGATE_DB": dsn, "CEREBRAS_API_KEYS": ",".join(keys), "KV_FLUSH_INTERVAL_MS": "200"}
    gw = gateway_factory(env=env, config=UNLIMITED)

    # traffic flows and its counters reach the primary (and, streamed, the standby)
    assert await fire(gw, 20) == [200] * 20
    assert post_key(gw, "before").status_code == 201
    cookies = log_in(gw)
    assert post_key(gw, "page-before", cookies).status_code == 201
    for server in (primary, standby):
        await eventually_async(
            lambda s=server: requests_are(s, 20), 10, "20 requests stored on both hosts"
        )

    # the primary goes away; nothing is writable until the standby is promoted
    _pg(primary, "stop", "-m", "fast", "-w", "-t", "30")
    failed_at = len(gw.log())
    assert await fire(gw, 15) == [200] * 15, "traffic goes on from memory"
    wait_log(gw, "counter flush failed", after=failed_at, timeout=10)
    during = post_key(gw, "during")
    assert during.status_code == 503, during.text
    assert during.json()["error"]["code"] == "store_unavailable"
    assert "retry-after" in during.headers
    # the page's session (its revocation is read from the store): the same answer, no logout
    during = post_key(gw, "page-during", cookies)
    assert during.status_code == 503, during.text
    assert during.json()["error"]["code"] == "store_unavailable"

    _pg(standby, "promote", "-w", "-t", "30")
    assert await fire(gw, 5) == [200] * 5

    # keygate is on the new primary: reads answer, a write is stored
    def reads() -> bool:
        with gw.client(timeout=15) as c:
            return c.get("/api/keys", headers=gw.admin()).status_code == 200

    eventually(reads, 15, "the admin API reads the store again", interval=0.2)
    after = post_key(gw, "after")
    assert after.status_code == 201, after.text
    assert await stored_label(standby, "after") == 1
    assert await stored_label(standby, "during") == 0, "a write answered 503 was stored"
    assert post_key(gw, "page-after", cookies).status_code == 201, "the session outlives it"
    assert await stored_label(standby, "page-during") == 0
    assert await stored_label(standby, "page-after") == 1
    assert await stored_label(standby, "before") == 1

    # the counters of the gap arrive, once: the clean shutdown's last flush adds nothing more
    await eventually_async(
        lambda: requests_are(standby, 40), 15, "40 requests stored after the switch"
    )
    assert gw.stop() == 0
    assert mock.count() == 40
    assert await stored_requests(standby) == (40, 40), "counters stored twice (or lost)"


async def requests_are(server: PostgresServer, n: int) -> bool:
    return await stored_requests(server) == (n, n)


# --- the multi-host URL ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:pw@127.0.0.1:5432,127.0.0.1:5433/db?target_session_attrs=read-write",
        "postgres://u@localhost:5432,127.0.0.1/db?target_session_attrs=primary",
        "postgresql://[::1]:5432,127.0.0.1:5433/db?target_session_attrs=read-write&sslmode=disable",
        "postgresql://u:pw@127.0.0.1:5432/db",  # one host: as before
    ],
)
def test_multi_host_url_accepted(url: str) -> None:
    assert load_settings({"KEYGATE_DB": url}).db_url == url


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("postgresql://u@127.0.0.1:5432,127.0.0.1:5433/db", "target_session_attrs=read-write"),
        (
            "postgresql://u@127.0.0.1:5432,127.0.0.1:5433/db?target_session_attrs=any",
            "target_session_attrs=read-write",
        ),
        (
            "postgresql://u@127.0.0.1:5432,127.0.0.1:5433/db?target_session_attrs=prefer-standby",
            "target_session_attrs=read-write",
        ),
        ("postgresql://u@127.0.0.1:5432,:5433/db?target_session_attrs=read-write", "host 2"),
        (
            "postgresql://u@127.0.0.1:5432,127.0.0.1:99999/db?target_session_attrs=read-write",
            "99999",
        ),
        ("postgresql://u@127.0.0.1:5432,127.0.0.1:x/db?target_session_attrs=read-write", "'x'"),
        ("postgresql://u@127.0.0.1,localhost/?target_session_attrs=read-write", "database"),
    ],
)
def test_multi_host_url_refused(url: str, problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings({"KEYGATE_DB": url})
    text = str(err.value)
    assert text.startswith("environment variable KEYGATE_DB:"), text
    assert problem in text, text
    assert "\n" not in text


def test_multi_host_url_password_not_shown() -> None:
    url = "postgresql://u:hunter2secret@127.0.0.1,localhost/db?target_session_attrs=any"
    with pytest.raises(ConfigError) as err:
        load_settings({"KEYGATE_DB": url})
    assert "hunter2secret" not in str(err.value)


# --- a flush whose outcome is unknown ----------------------------------------------------------


class _CutAfterCommit:
    """The store's driver, but the next write (once armed) is committed and then answered with
    a lost connection, as when a failover cuts it during COMMIT; or, `before`, not committed."""

    def __init__(self, driver: Any) -> None:
        self._driver = driver
        self.armed: str | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._driver, name)

    async def write(self, body: Any) -> Any:
        armed, self.armed = self.armed, None
        if armed == "before":
            raise StoreUnavailable("PostgreSQL database is unavailable: connection lost")
        result = await self._driver.write(body)
        if armed == "after":
            raise StoreUnavailable("PostgreSQL database is unavailable: connection lost")
        return result


async def _flushing(tmp_path: Path) -> tuple[Any, Any, Any, _CutAfterCommit]:
    from keygate.runtime.provider import ProviderRuntime
    from keygate.runtime.sync import StoreSync

    settings = load_settings({"KV_FLUSH_INTERVAL_MS": "500", "KEYGATE_DATA_DIR": str(tmp_path)})
    store = create_store(f"sqlite:///{tmp_path / 'keygate.db'}", "")
    await store.open()
    await store.add_keys("cerebras", ["csk-unsure-aaaaaaaaaaaa0001"], source="env")
    rt = ProviderRuntime(settings.providers["cerebras"])
    sync = StoreSync(store, {"cerebras": rt}, settings)
    await sync.load_all()
    cut = _CutAfterCommit(store._state.driver)
    store._state.driver = cut
    return store, sync, rt, cut


def _use(rt: Any, n: int) -> None:
    [entry] = rt.pool.entries.values()
    for _ in range(n):
        entry.use_count += 1
        entry.ok += 1
        rt.stats.requests += 1
        rt.stats.ok += 1
    rt.pool.touched.add(entry.id)


async def _stored(store: Any) -> tuple[int, int]:
    keys, _ = await store.list_keys("cerebras", None, None, 10, 0)
    return keys[0].use_count, (await store.provider_totals())["cerebras"]["requests"]


@pytest.mark.parametrize("cut", ["after", "before"])
async def test_a_flush_the_store_failed_is_counted_once(tmp_path: Path, cut: str) -> None:
    store, sync, rt, driver = await _flushing(tmp_path)
    try:
        _use(rt, 5)
        driver.armed = cut
        with pytest.raises(StoreUnavailable):
            await sync.flush()
        _use(rt, 2)
        await sync.poll()  # the change poll merges stored counters: not twice either
        await sync.flush()
        await sync.flush()
        assert await _stored(store) == (7, 7)
        [entry] = rt.pool.entries.values()
        assert entry.use_count == 7
    finally:
        await store.close()


# --- a connection to a server that stopped being writable --------------------------------------


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[PostgresServer]:
    """A cluster of its own: the test changes server-wide settings."""
    server = start_postgres(tmp_path)
    try:
        asyncio.run(_create_database(server.dsn, "keygate"))
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("_", [pytest.param(None, marks=needs_postgres)], ids=["postgres"])
async def test_a_connection_gone_read_only_is_dropped_not_reused(
    _: None, own_postgres: PostgresServer
) -> None:
    server = own_postgres
    store = create_store(server.database_dsn("keygate"), "")
    await store.open()
    admin = await asyncpg.connect(server.dsn)
    try:
        await store.add_key("cerebras", make_key("ro0"))
        # The connections keygate holds turn read-only (a server fenced by the failover tool);
        # a new one is writable again (the database's own setting wins for new sessions).
        await admin.execute("ALTER DATABASE keygate SET default_transaction_read_only = off")
        await admin.execute("ALTER SYSTEM SET default_transaction_read_only = on")
        await admin.execute("SELECT pg_reload_conf()")

        async def refused() -> bool:
            try:
                await store.add_key("cerebras", make_key("ro1"))
            except StoreUnavailable as exc:
                assert "read-only" in str(exc)
                return True
            return False

        await eventually_async(refused, 5, "a write on the read-only connection refused")
        # the next write gets a fresh connection: writable
        added = await store.add_key("cerebras", make_key("ro2"))
        assert [k.id for k in await store.get_keys([added.id])] == [added.id]
    finally:
        await admin.execute("ALTER SYSTEM RESET default_transaction_read_only")
        await admin.close()
        await store.close()


async def test_a_flush_is_marked_in_its_own_transaction(store: Any) -> None:
    """Both stores: `flush_stored` says whether a writer's batch was committed; the mark
    moves no change feed, and a mark a month old is pruned."""
    rec = await store.add_key("groq", make_key("mark"))

    async def month_old_mark(db: Any) -> None:
        await db.execute(
            "INSERT INTO meta (name, value, updated_seq) VALUES ('flush.gone', '0000000001 3', 0)"
        )

    await store.driver.write(month_old_mark)
    assert await store.flush_stored("gone", 3)
    assert not await store.flush_stored("w1", 1)
    seq = await store.current_seq()
    await store.add_flush(
        "w1", 1, [(rec.id, 2, 2, 0, 0, 5, 6, 77.0)], {"groq": (2, 2, 0, 0, 5, 6)}, [], []
    )
    assert await store.flush_stored("w1", 1)
    assert not await store.flush_stored("w1", 2)
    assert not await store.flush_stored("w2", 1)
    assert not await store.flush_stored("gone", 3), "a month-old mark stays"
    [key] = await store.get_keys([rec.id])
    assert (key.use_count, key.tokens_in, key.tokens_out) == (2, 5, 6)
    assert (await store.provider_totals())["groq"]["requests"] == 2
    changes = await store.changes_since(seq)
    assert (changes.key_ids, changes.providers_changed) == ([], False)
